/*
 * dispatch.h -- the SIMD variant of every kernel family, chosen once.
 *
 * Each op family has a struct of function pointers: the per-row (or
 * per-tile) kernels that exist in a scalar, an AVX2+FMA, an AVX-512 and
 * (on aarch64) a NEON flavour.  The family's file defines one const
 * instance per ISA next to the kernels themselves (e.g. softmax.c:
 * softmax_scalar_kernels, softmax_avx2_kernels, softmax_avx512_kernels,
 * softmax_neon_kernels).  llm_set_isa() (cpu.c),
 * run at load and whenever pg_llm.simd changes, points llm_kernels at the
 * set of tables of the ISA in use; it is the only writer.  A kernel reads
 * llm_kernels once, on the calling thread, and hands the family's table to
 * its tasks, so one call never mixes ISAs.
 *
 * The backward of a family goes into the same struct as its forward.
 */
#ifndef PG_LLM_DISPATCH_H
#define PG_LLM_DISPATCH_H

#include <stdint.h>

#include "kernels.h"

/* matmul/: the GEMM register block, micro-kernels, packing and GEMV */
typedef struct matmul_kernels matmul_kernels;	/* matmul/matmul_internal.h */

/* gelu.c: n values; the backward adds dy * gelu'(x) into dx */
typedef struct
{
	void		(*forward) (const float *x, float *y, int64_t n);
	void		(*backward) (const float *x, const float *dy, float *dx, int64_t n);
} gelu_kernels;

/*
 * softmax.c: one row of n > 0 values (y may be x).  Returns the row's max
 * and sum of exp(x - max), which cost nothing more: the row's logsumexp is
 * max + log(sum).  The backward adds y * (dy - sum(y * dy)) into dx.
 */
typedef struct
{
	float		max;
	double		sum;
} softmax_stats;

typedef struct
{
	softmax_stats (*row) (const float *x, float *y, int64_t n);
	void		(*row_backward) (const float *y, const float *dy, float *dx, int64_t n);
} softmax_kernels;

/*
 * layernorm.c: one row of n > 0 values.  Returns the row's mean and
 * rstd = 1/sqrt(var + eps), as used.
 */
typedef struct
{
	float		mean;
	float		rstd;
} layernorm_stats;

/*
 * The backward: row_backward adds one row's dx; param_grads adds, for
 * columns [c0, c1) of x and dy [rows, cols], the sums over rows of
 * xhat * dy into dg and of dy into db (either may be NULL).
 */
typedef struct
{
	layernorm_stats (*row) (const float *x, const float *g, const float *b, float *y,
							int64_t n, float eps);
	void		(*row_backward) (const float *x, const float *g, const float *dy,
								 float *dx, int64_t n, float mean, float rstd);
	void		(*param_grads) (const float *x, const float *dy, const float *mean,
								const float *rstd, float *dg, float *db,
								int64_t rows, int64_t cols, int64_t c0, int64_t c1);
} layernorm_kernels;

/*
 * cross_entropy.c: log(sum(exp(x))) of one row of n > 0 values; the
 * backward of one row adds scale * (exp(x - lse) - onehot(target)) into dx
 * (or, not accumulate, stores it: dx may then be x itself).
 */
typedef struct
{
	double		(*logsumexp) (const float *x, int64_t n);
	void		(*row_backward) (const float *x, int64_t n, float lse, int32_t target,
								 float scale, float *dx, int accumulate);
} cross_entropy_kernels;

/*
 * attention/inner_kernels.c: the decode path's dot products and weighted
 * sums, the register tile c[8][32] = scale * A B or c += A B (A read with
 * any strides), and the backward's row of P and dS (see there).
 */
typedef struct
{
	void		(*scores_row) (const float *q, const float *k, int64_t ldk, int64_t nk,
							   int64_t hd, float scale, float *scores);
	void		(*weighted_sum) (const float *p, const float *v, int64_t ldv, int64_t nk,
								 int64_t hd, float *out);
	void		(*tile) (const float *a, int64_t ars, int64_t ats, const float *b,
						 int64_t ldb, int64_t n, float *c, int64_t ldc, float scale,
						 int accumulate);
	void		(*probs_row) (float *s, float *dp, int64_t n, int64_t w, float scale,
							  float lse, float d);
} attention_kernels;

/*
 * adamw.c: one AdamW update of n consecutive floats of one tensor (decay:
 * apply weight decay), with the float32 constants of the update.
 */
typedef struct adamw_consts adamw_consts;	/* adamw.c */

typedef struct
{
	void		(*update) (float *p, const float *g, float *m, float *v, int64_t n,
						   const adamw_consts *k, int decay);
} adamw_kernels;

/*
 * elementwise.c: x[0 .. n-1] rounded to bf16 precision into y (y may be
 * x), each as bf16.h's llm_round_bf16.  AVX-512 machines run the AVX2
 * variant (a memory-bound pass: wider vectors would not be faster).
 */
typedef struct
{
	void		(*round) (const float *x, float *y, int64_t n);
} round_bf16_kernels;

/*
 * The families, once: llm_kernel_tables has a member per family, and each
 * family's file defines <family>_scalar_kernels, <family>_avx2_kernels,
 * <family>_avx512_kernels and <family>_neon_kernels, which cpu.c's rows
 * point at.
 */
#define LLM_KERNEL_FAMILIES(FAMILY) \
	FAMILY(matmul) \
	FAMILY(gelu) \
	FAMILY(softmax) \
	FAMILY(layernorm) \
	FAMILY(cross_entropy) \
	FAMILY(attention) \
	FAMILY(adamw) \
	FAMILY(round_bf16)

/* One ISA's tables, one per family. */
#define LLM_FAMILY_MEMBER(family) const family##_kernels *family;
typedef struct
{
	llm_isa		isa;
	LLM_KERNEL_FAMILIES(LLM_FAMILY_MEMBER)
} llm_kernel_tables;
#undef LLM_FAMILY_MEMBER

/* The tables in use (never NULL: the scalar ones until llm_set_isa runs). */
extern const llm_kernel_tables *llm_kernels;

#define LLM_FAMILY_TABLES(family) \
	extern const family##_kernels family##_scalar_kernels, family##_avx2_kernels, \
		family##_avx512_kernels, family##_neon_kernels;
LLM_KERNEL_FAMILIES(LLM_FAMILY_TABLES)
#undef LLM_FAMILY_TABLES

#endif							/* PG_LLM_DISPATCH_H */
