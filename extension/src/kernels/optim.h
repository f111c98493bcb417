/*
 * optim.h -- the optimizer's math in plain C (no PostgreSQL header), over a
 * flat arena that holds every parameter of a model one after the other:
 *
 *   optim.c    the tensors of an arena, cut into fixed chunks; gradient
 *              norms and clipping (torch.nn.utils.clip_grad_norm_); the
 *              learning-rate schedule (nanoGPT's warmup + cosine);
 *   adamw.c    one AdamW update (torch.optim.AdamW, single-tensor path).
 *
 * Parameters, gradients and the two moments are four arenas with the same
 * layout, described by an array of LlmParamRange (one per named tensor, in
 * arena order, not overlapping; the gaps between them are never read or
 * written).
 *
 * Determinism: work is cut into chunks of LLM_OPTIM_CHUNK floats that never
 * cross a tensor's boundary; updates are elementwise, and reductions sum
 * each chunk on its own, then the chunks of a tensor in order.  So every
 * result depends only on the layout, never on pg_llm.threads, and the SIMD
 * variants of the update (dispatch.h's adamw table) give the same bits as
 * the plain C (the same operations in the same order: IEEE add, mul, div,
 * sqrt and fused multiply-add).
 *
 * The functions that run for long return LLM_OK, LLM_INTERRUPTED (the
 * interrupt hook fired: the output is partly updated and must be thrown
 * away) or LLM_NOMEM.
 */
#ifndef PG_LLM_KERNELS_OPTIM_H
#define PG_LLM_KERNELS_OPTIM_H

#include <stdint.h>

#include "kernels.h"

/* Floats per chunk of work (and per partial sum of a reduction). */
#define LLM_OPTIM_CHUNK 32768

/* One tensor of a parameter arena. */
typedef struct LlmParamRange
{
	int64_t		offset;			/* its first float, from the arena's start */
	int64_t		numel;			/* floats, >= 0 */
	int			decay;			/* 1: weight decay applies (nanoGPT: ndim >= 2) */
} LlmParamRange;

/* ---- chunks (optim.c), shared by the kernels of this header ---------------- */

/* The chunks of an arena: range r owns chunks first[r] .. first[r + 1] - 1. */
typedef struct LlmChunks
{
	const LlmParamRange *ranges;
	int			n_ranges;
	int64_t		n_chunks;
	int64_t    *first;			/* [n_ranges + 1], malloc'd */
} LlmChunks;

/* LLM_OK, or LLM_NOMEM. */
int			llm_chunks_init(LlmChunks *c, const LlmParamRange *ranges, int n_ranges);
void		llm_chunks_free(LlmChunks *c);

/* The range of chunk k (0 <= k < n_chunks) and its floats [*begin, *end) in the arena. */
int			llm_chunk_at(const LlmChunks *c, int64_t k, int64_t *begin, int64_t *end);

/* sums[r] = the sum of partial[first[r] .. first[r + 1] - 1], in chunk order. */
void		llm_chunks_combine(const LlmChunks *c, const double *partial, double *sums);

/* ---- norms and clipping (optim.c) ---------------------------------------- */

/*
 * sq[r] = the sum of squares of tensor r of `x` (in double: float * float is
 * exact in double, only the sums round).
 */
int			llm_sum_squares(const float *x, const LlmParamRange *ranges, int n_ranges,
							double *sq);

/*
 * torch.nn.utils.clip_grad_norm_(params, max_norm) over the gradient arena:
 *   norms[r] = ||grad of tensor r|| as float32 (may be NULL);
 *   *total   = the L2 norm of those per-tensor norms, as float32: the norm
 *              before clipping, what clip_grad_norm_ returns;
 *   then, when max_norm > 0, every gradient is multiplied by
 *   llm_clip_coef(*total, max_norm) (by 1 too: as torch, always).
 * max_norm <= 0 only measures.
 */
int			llm_clip_grad_norm(float *grads, const LlmParamRange *ranges, int n_ranges,
							   double max_norm, float *norms, float *total);

/*
 * min(1, max_norm / (total + 1e-6)) with torch's float32 rounding
 * (max_norm / tensor is computed as tensor.reciprocal() * max_norm).
 */
float		llm_clip_coef(float total, double max_norm);

/* x[range] *= s for every range. */
int			llm_scale_ranges(float *x, const LlmParamRange *ranges, int n_ranges, float s);

/* ---- the learning rate (optim.c) -------------------------------------------- */

/* nanoGPT's schedule: linear warmup, cosine decay to min_lr, then min_lr. */
typedef struct LlmLrSchedule
{
	double		lr;				/* peak learning rate, > 0 */
	int64_t		warmup_steps;	/* >= 0 */
	int64_t		decay_steps;	/* step where the decay reaches min_lr, > warmup_steps */
	double		min_lr;
} LlmLrSchedule;

/*
 * The learning rate of update number `it` (0 for the first), computed as
 * torch.optim.lr_scheduler.LambdaLR(opt, lambda it: get_lr(it) / lr) hands
 * it to the optimizer: lr * (get_lr(it) / lr), with nanoGPT's get_lr:
 *   it < warmup_steps:  lr * (it + 1) / (warmup_steps + 1)
 *   it > decay_steps:   min_lr
 *   else:               min_lr + 0.5 * (1 + cos(pi * ratio)) * (lr - min_lr),
 *                       ratio = (it - warmup_steps) / (decay_steps - warmup_steps)
 */
double		llm_lr_at(const LlmLrSchedule *s, int64_t it);

/* ---- AdamW (adamw.c) ---------------------------------------------------------- */

typedef struct LlmAdamW
{
	double		lr;
	double		beta1;			/* torch's defaults: 0.9 */
	double		beta2;			/* 0.999 */
	double		eps;			/* 1e-8 */
	double		weight_decay;	/* 0.01; applied to the ranges with decay set */
	int64_t		step;			/* this update's number, 1 for the first */
} LlmAdamW;

/*
 * One AdamW update of every range, exactly the operations of torch's
 * _single_tensor_adam (decoupled weight decay) on float32 tensors:
 *
 *   p = p * (float)(1 - lr * wd)                       (decay ranges only)
 *   m = fma(1 - beta1, g - m, m)                       (m.lerp_(g, 1 - beta1))
 *   v = fma((1 - beta2) * g, g, v * beta2)             (v.mul_(beta2).addcmul_(g, g, 1 - beta2))
 *   d = sqrt(v) / (float)sqrt(1 - beta2^step) + eps
 *   p = p + ((float)(-lr / (1 - beta1^step)) * m) / d  (p.addcdiv_(m, d, -step_size))
 *
 * with every scalar computed in double as Python does, then rounded to
 * float.  torch's float32 sqrt (MKL) may differ from the IEEE one by an ulp,
 * so p can differ from torch's by about an ulp per step; m and v match bits.
 *
 * update_sq (NULL or [n_ranges]): the sum of squares of each range's change
 * of p, for the update / data ratio.
 */
int			llm_adamw_update(float *params, const float *grads, float *m, float *v,
							 const LlmParamRange *ranges, int n_ranges,
							 const LlmAdamW *hp, double *update_sq);

#endif							/* PG_LLM_KERNELS_OPTIM_H */
