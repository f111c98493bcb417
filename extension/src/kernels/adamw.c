/*
 * adamw.c -- one AdamW update over a parameter arena, operation for
 * operation what torch.optim.AdamW does to float32 tensors on the CPU
 * (torch/optim/adam.py, _single_tensor_adam with decoupled_weight_decay):
 *
 *   param.mul_(1 - lr * weight_decay)
 *   exp_avg.lerp_(grad, 1 - beta1)                   # a fused multiply-add
 *   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # one too
 *   bias_correction1 = 1 - beta1 ** step
 *   bias_correction2 = 1 - beta2 ** step
 *   step_size = lr / bias_correction1
 *   denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)
 *   param.addcdiv_(exp_avg, denom, value=-step_size)
 *
 * The scalars are Python floats (double) until they meet a float32 tensor,
 * where they are rounded to float; so are they here.  The plain C, AVX2,
 * AVX-512 and NEON variants do the same IEEE operations in the same order and give
 * the same bits.  Work is cut into the chunks of optim.c (see optim.h).
 */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "simd.h"

/*
 * torch rounds p * (1 - lr * wd) to float before adding the step; a
 * compiler that contracts a * b + c into a fused multiply-add (gcc does, in
 * functions that may use FMA) would not.  ROUNDED(x) makes x opaque.
 */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define ROUNDED(x) __asm__("" : "+x"(x))
#elif defined(__GNUC__) && defined(__aarch64__)
#define ROUNDED(x) __asm__("" : "+w"(x))	/* aarch64 contracts by default */
#else
#define ROUNDED(x) ((void) 0)
#endif

/* The float32 constants of one update. */
struct adamw_consts
{
	float		decay_mul;		/* 1 - lr * weight_decay */
	float		lerp_w;			/* lerp's weight, 1 - beta1, or (1 - beta1) - 1 */
	int			lerp_from_m;	/* |1 - beta1| < 0.5: m + w (g - m); else g + (w - 1)(g - m) */
	float		beta2;
	float		one_minus_beta2;
	float		bc2_sqrt;		/* sqrt(1 - beta2^step) */
	float		eps;
	float		neg_step_size;	/* -lr / (1 - beta1^step) */
};

static adamw_consts
constants(const LlmAdamW *hp)
{
	adamw_consts k;
	float		w = (float) (1.0 - hp->beta1);
	double		bc1 = 1.0 - pow(hp->beta1, (double) hp->step);
	double		bc2 = 1.0 - pow(hp->beta2, (double) hp->step);

	k.decay_mul = (float) (1.0 - hp->lr * hp->weight_decay);
	/* torch's lerp: weight small ? self + w * (end - self) : end - (end - self) * (1 - w) */
	k.lerp_from_m = fabsf(w) < 0.5f;
	k.lerp_w = k.lerp_from_m ? w : w - 1.0f;
	k.beta2 = (float) hp->beta2;
	k.one_minus_beta2 = (float) (1.0 - hp->beta2);
	k.bc2_sqrt = (float) pow(bc2, 0.5);
	k.eps = (float) hp->eps;
	k.neg_step_size = (float) -(hp->lr / bc1);
	return k;
}

/* ---- the update of n consecutive floats, per ISA ------------------------------- */

static void
adamw_scalar(float *p, const float *g, float *m, float *v, int64_t n,
			 const adamw_consts *k, int decay)
{
	for (int64_t i = 0; i < n; i++)
	{
		float		pi = decay ? p[i] * k->decay_mul : p[i];
		float		mi = fmaf(k->lerp_w, g[i] - m[i], k->lerp_from_m ? m[i] : g[i]);
		float		vi = fmaf(k->one_minus_beta2 * g[i], g[i], v[i] * k->beta2);
		float		denom = sqrtf(vi) / k->bc2_sqrt + k->eps;

		ROUNDED(pi);
		m[i] = mi;
		v[i] = vi;
		p[i] = pi + (k->neg_step_size * mi) / denom;
	}
}

#if LLM_X86

TARGET_AVX2 static void
adamw_avx2(float *p, const float *g, float *m, float *v, int64_t n,
		   const adamw_consts *k, int decay)
{
	__m256		decay_mul = _mm256_set1_ps(decay ? k->decay_mul : 1.0f);
	__m256		lerp_w = _mm256_set1_ps(k->lerp_w);
	__m256		beta2 = _mm256_set1_ps(k->beta2);
	__m256		one_minus_beta2 = _mm256_set1_ps(k->one_minus_beta2);
	__m256		bc2_sqrt = _mm256_set1_ps(k->bc2_sqrt);
	__m256		eps = _mm256_set1_ps(k->eps);
	__m256		neg_step = _mm256_set1_ps(k->neg_step_size);
	int64_t		i = 0;

	for (; i + 8 <= n; i += 8)
	{
		__m256		gi = _mm256_loadu_ps(g + i);
		__m256		mi = _mm256_loadu_ps(m + i);
		__m256		vi = _mm256_loadu_ps(v + i);
		__m256		pi = _mm256_loadu_ps(p + i);
		__m256		denom;

		if (decay)
			pi = _mm256_mul_ps(pi, decay_mul);
		ROUNDED(pi);
		mi = _mm256_fmadd_ps(lerp_w, _mm256_sub_ps(gi, mi), k->lerp_from_m ? mi : gi);
		vi = _mm256_fmadd_ps(_mm256_mul_ps(one_minus_beta2, gi), gi, _mm256_mul_ps(vi, beta2));
		denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2_sqrt), eps);
		pi = _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(neg_step, mi), denom));
		_mm256_storeu_ps(m + i, mi);
		_mm256_storeu_ps(v + i, vi);
		_mm256_storeu_ps(p + i, pi);
	}
	adamw_scalar(p + i, g + i, m + i, v + i, n - i, k, decay);
}

TARGET_AVX512 static void
adamw_avx512(float *p, const float *g, float *m, float *v, int64_t n,
			 const adamw_consts *k, int decay)
{
	__m512		decay_mul = _mm512_set1_ps(decay ? k->decay_mul : 1.0f);
	__m512		lerp_w = _mm512_set1_ps(k->lerp_w);
	__m512		beta2 = _mm512_set1_ps(k->beta2);
	__m512		one_minus_beta2 = _mm512_set1_ps(k->one_minus_beta2);
	__m512		bc2_sqrt = _mm512_set1_ps(k->bc2_sqrt);
	__m512		eps = _mm512_set1_ps(k->eps);
	__m512		neg_step = _mm512_set1_ps(k->neg_step_size);

	for (int64_t i = 0; i < n; i += 16)
	{
		__mmask16	mask = mask16(n - i);
		__m512		gi = _mm512_maskz_loadu_ps(mask, g + i);
		__m512		mi = _mm512_maskz_loadu_ps(mask, m + i);
		__m512		vi = _mm512_maskz_loadu_ps(mask, v + i);
		__m512		pi = _mm512_maskz_loadu_ps(mask, p + i);
		__m512		denom;

		if (decay)
			pi = _mm512_mul_ps(pi, decay_mul);
		ROUNDED(pi);
		mi = _mm512_fmadd_ps(lerp_w, _mm512_sub_ps(gi, mi), k->lerp_from_m ? mi : gi);
		vi = _mm512_fmadd_ps(_mm512_mul_ps(one_minus_beta2, gi), gi, _mm512_mul_ps(vi, beta2));
		denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2_sqrt), eps);
		pi = _mm512_add_ps(pi, _mm512_div_ps(_mm512_mul_ps(neg_step, mi), denom));
		_mm512_mask_storeu_ps(m + i, mask, mi);
		_mm512_mask_storeu_ps(v + i, mask, vi);
		_mm512_mask_storeu_ps(p + i, mask, pi);
	}
}
#endif

#if LLM_NEON
/* the AVX2 loop with 4-float vectors */
static void
adamw_neon(float *p, const float *g, float *m, float *v, int64_t n,
		   const adamw_consts *k, int decay)
{
	float32x4_t decay_mul = vdupq_n_f32(decay ? k->decay_mul : 1.0f);
	float32x4_t lerp_w = vdupq_n_f32(k->lerp_w);
	float32x4_t beta2 = vdupq_n_f32(k->beta2);
	float32x4_t one_minus_beta2 = vdupq_n_f32(k->one_minus_beta2);
	float32x4_t bc2_sqrt = vdupq_n_f32(k->bc2_sqrt);
	float32x4_t eps = vdupq_n_f32(k->eps);
	float32x4_t neg_step = vdupq_n_f32(k->neg_step_size);
	int64_t		i = 0;

	for (; i + 4 <= n; i += 4)
	{
		float32x4_t gi = vld1q_f32(g + i);
		float32x4_t mi = vld1q_f32(m + i);
		float32x4_t vi = vld1q_f32(v + i);
		float32x4_t pi = vld1q_f32(p + i);
		float32x4_t denom;

		if (decay)
			pi = vmulq_f32(pi, decay_mul);
		ROUNDED(pi);
		mi = vfmaq_f32(k->lerp_from_m ? mi : gi, lerp_w, vsubq_f32(gi, mi));
		vi = vfmaq_f32(vmulq_f32(vi, beta2), vmulq_f32(one_minus_beta2, gi), gi);
		denom = vaddq_f32(vdivq_f32(vsqrtq_f32(vi), bc2_sqrt), eps);
		pi = vaddq_f32(pi, vdivq_f32(vmulq_f32(neg_step, mi), denom));
		vst1q_f32(m + i, mi);
		vst1q_f32(v + i, vi);
		vst1q_f32(p + i, pi);
	}
	adamw_scalar(p + i, g + i, m + i, v + i, n - i, k, decay);
}
#endif

const adamw_kernels adamw_scalar_kernels = {adamw_scalar};
#if LLM_X86
const adamw_kernels adamw_avx2_kernels = {adamw_avx2};
const adamw_kernels adamw_avx512_kernels = {adamw_avx512};
#endif
#if LLM_NEON
const adamw_kernels adamw_neon_kernels = {adamw_neon};
#endif

/* ---- the chunks ------------------------------------------------------------------ */

/* Floats updated at a time when the change of p is measured (a stack buffer). */
#define UPDATE_BLOCK 1024

typedef struct AdamWCtx
{
	float	   *p;
	const float *g;
	float	   *m;
	float	   *v;
	const LlmChunks *chunks;
	adamw_consts k;
	const adamw_kernels *kernels;
	double	   *partial;		/* [n_chunks] sums of squares of the change, or NULL */
} AdamWCtx;

static void
adamw_task(void *arg, int64_t k0, int64_t k1)
{
	AdamWCtx   *c = arg;

	for (int64_t k = k0; k < k1; k++)
	{
		int64_t		begin,
					end;
		int			decay = c->chunks->ranges[llm_chunk_at(c->chunks, k, &begin, &end)].decay;
		double		sq = 0.0;

		if (c->partial == 0)
		{
			c->kernels->update(c->p + begin, c->g + begin, c->m + begin, c->v + begin,
							   end - begin, &c->k, decay);
			continue;
		}
		for (int64_t b = begin; b < end; b += UPDATE_BLOCK)
		{
			int64_t		n = end - b < UPDATE_BLOCK ? end - b : UPDATE_BLOCK;
			float		before[UPDATE_BLOCK];

			memcpy(before, c->p + b, (size_t) n * sizeof(float));
			c->kernels->update(c->p + b, c->g + b, c->m + b, c->v + b, n, &c->k, decay);
			for (int64_t i = 0; i < n; i++)
			{
				double		d = (double) c->p[b + i] - (double) before[i];

				sq += d * d;
			}
		}
		c->partial[k] = sq;
	}
}

int
llm_adamw_update(float *params, const float *grads, float *m, float *v,
				 const LlmParamRange *ranges, int n_ranges,
				 const LlmAdamW *hp, double *update_sq)
{
	LlmChunks	chunks;
	AdamWCtx	c;
	int			status;

	if (llm_chunks_init(&chunks, ranges, n_ranges) != LLM_OK)
		return LLM_NOMEM;
	c.p = params;
	c.g = grads;
	c.m = m;
	c.v = v;
	c.chunks = &chunks;
	c.k = constants(hp);
	c.kernels = llm_kernels->adamw;	/* read once: one call, one ISA */
	c.partial = 0;
	if (update_sq)
	{
		c.partial = malloc(sizeof(double) * (size_t) (chunks.n_chunks + 1));
		if (c.partial == 0)
		{
			llm_chunks_free(&chunks);
			return LLM_NOMEM;
		}
	}
	status = llm_parallel_for(chunks.n_chunks, 1, adamw_task, &c);
	if (status == LLM_OK && update_sq)
		llm_chunks_combine(&chunks, c.partial, update_sq);
	free(c.partial);
	llm_chunks_free(&chunks);
	return status;
}
