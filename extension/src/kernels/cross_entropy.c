/*
 * cross_entropy.c -- mean cross-entropy of logits against target ids, as
 * torch.nn.functional.cross_entropy with ignore_index = -100:
 *
 *   loss_r = -log softmax(x_r)[t_r] = logsumexp(x_r) - x_r[t_r]
 *
 * logsumexp is max + log(sum(exp(x - max))): every exp is at most 1, so
 * nothing overflows, and the sum is kept in double, as is the total.  Each
 * row's logsumexp is handed back when the caller asks (the backward's
 * softmax is exp(x - lse)).
 *
 * Backward of the mean loss, for each counted row (target >= 0):
 *
 *   dx_r += scale * (softmax(x_r) - onehot(t_r)),  softmax(x_r) = exp(x_r - lse_r)
 *
 * one exp and one multiply-add per logit; the one-hot is subtracted from
 * the target's probability before scaling.  Rows are independent: tasks of
 * whole rows, as the forward.
 */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "simd.h"

static double
logsumexp_scalar(const float *x, int64_t n)
{
	float		max = -INFINITY;
	double		sum = 0.0;

	for (int64_t i = 0; i < n; i++)
		max = x[i] > max ? x[i] : max;
	for (int64_t i = 0; i < n; i++)
		sum += expf(x[i] - max);
	return max + log(sum);
}

static void
row_backward_scalar(const float *x, int64_t n, float lse, int32_t target,
					float scale, float *dx, int accumulate)
{
	for (int64_t i = 0; i < n; i++)
	{
		float		g = scale * (expf(x[i] - lse) - (i == target ? 1.0f : 0.0f));

		dx[i] = accumulate ? dx[i] + g : g;
	}
}

const cross_entropy_kernels cross_entropy_scalar_kernels = {
	logsumexp_scalar, row_backward_scalar
};

#if LLM_X86

/* sum += e, with the 16 floats of e widened to two vectors of 8 doubles */
TARGET_AVX512 static inline void
add_widened_avx512(__m512 e, __m512d *sum_lo, __m512d *sum_hi)
{
	__m256		e_lo = _mm512_castps512_ps256(e);
	__m256		e_hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1));

	*sum_lo = _mm512_add_pd(*sum_lo, _mm512_cvtps_pd(e_lo));
	*sum_hi = _mm512_add_pd(*sum_hi, _mm512_cvtps_pd(e_hi));
}

TARGET_AVX512 static double
logsumexp_avx512(const float *x, int64_t n)
{
	float		max = max_avx512(x, n);
	__m512		vmax = _mm512_set1_ps(max);
	__m512d		sum_lo = _mm512_setzero_pd(),
				sum_hi = _mm512_setzero_pd();
	__mmask16	m = mask16(n % 16);
	int64_t		full = n - n % 16;
	int64_t		i;

	for (i = 0; i < full; i += 16)
		add_widened_avx512(exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmax)),
						   &sum_lo, &sum_hi);
	if (m)
	{
		__m512		e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax));

		add_widened_avx512(_mm512_maskz_mov_ps(m, e), &sum_lo, &sum_hi);
	}
	return max + log(_mm512_reduce_add_pd(_mm512_add_pd(sum_lo, sum_hi)));
}

TARGET_AVX2 static double
logsumexp_avx2(const float *x, int64_t n)
{
	float		max = max_avx2(x, n);
	__m256		vmax = _mm256_set1_ps(max);
	__m256d		sum_lo = _mm256_setzero_pd(),
				sum_hi = _mm256_setzero_pd();
	int64_t		full = n - n % 8;
	int64_t		i;
	double		sum;

	for (i = 0; i < full; i += 8)
	{
		__m256		e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));

		sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
		sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
	}
	sum = hsum_pd_avx2(_mm256_add_pd(sum_lo, sum_hi));
	for (; i < n; i++)
		sum += expf(x[i] - max);
	return max + log(sum);
}

TARGET_AVX512 static void
row_backward_avx512(const float *x, int64_t n, float lse, int32_t target,
					float scale, float *dx, int accumulate)
{
	__m512		vlse = _mm512_set1_ps(lse),
				vscale = _mm512_set1_ps(scale),
				one = _mm512_set1_ps(1.0f);

	for (int64_t i = 0; i < n; i += 16)
	{
		__mmask16	m = mask16(n - i);
		__m512		p = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vlse));

		if (target >= i && target < i + 16)
			p = _mm512_mask_sub_ps(p, (__mmask16) (1u << (target - i)), p, one);
		p = accumulate ? _mm512_fmadd_ps(vscale, p, _mm512_maskz_loadu_ps(m, dx + i))
			: _mm512_mul_ps(vscale, p);
		_mm512_mask_storeu_ps(dx + i, m, p);
	}
}

TARGET_AVX2 static void
row_backward_avx2(const float *x, int64_t n, float lse, int32_t target,
				  float scale, float *dx, int accumulate)
{
	const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	__m256		vlse = _mm256_set1_ps(lse),
				vscale = _mm256_set1_ps(scale),
				one = _mm256_set1_ps(1.0f);
	int64_t		full = n - n % 8;
	int64_t		i;

	for (i = 0; i < full; i += 8)
	{
		__m256		p = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vlse));

		if (target >= i && target < i + 8)
		{
			__m256		hit = _mm256_castsi256_ps(_mm256_cmpeq_epi32(lane,
																	 _mm256_set1_epi32((int) (target - i))));

			p = _mm256_sub_ps(p, _mm256_and_ps(hit, one));
		}
		p = accumulate ? _mm256_fmadd_ps(vscale, p, _mm256_loadu_ps(dx + i))
			: _mm256_mul_ps(vscale, p);
		_mm256_storeu_ps(dx + i, p);
	}
	row_backward_scalar(x + i, n - i, lse, (int32_t) (target - i), scale, dx + i, accumulate);
}

const cross_entropy_kernels cross_entropy_avx2_kernels = {
	logsumexp_avx2, row_backward_avx2
};
const cross_entropy_kernels cross_entropy_avx512_kernels = {
	logsumexp_avx512, row_backward_avx512
};

#endif							/* LLM_X86 */

#if LLM_NEON

/* NEON: the AVX2 rows with 4-float vectors (2 doubles per sum) */
static double
logsumexp_neon(const float *x, int64_t n)
{
	float		max = max_neon(x, n);
	float32x4_t vmax = vdupq_n_f32(max);
	float64x2_t sum_lo = vdupq_n_f64(0.0),
				sum_hi = vdupq_n_f64(0.0);
	int64_t		full = n - n % 4;
	int64_t		i;
	double		sum;

	for (i = 0; i < full; i += 4)
	{
		float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(x + i), vmax));

		sum_lo = vaddq_f64(sum_lo, vcvt_f64_f32(vget_low_f32(e)));
		sum_hi = vaddq_f64(sum_hi, vcvt_high_f64_f32(e));
	}
	sum = vaddvq_f64(vaddq_f64(sum_lo, sum_hi));
	for (; i < n; i++)
		sum += expf(x[i] - max);
	return max + log(sum);
}

static void
row_backward_neon(const float *x, int64_t n, float lse, int32_t target,
				  float scale, float *dx, int accumulate)
{
	const int32_t lanes[4] = {0, 1, 2, 3};
	int32x4_t	lane = vld1q_s32(lanes);
	float32x4_t vlse = vdupq_n_f32(lse),
				vscale = vdupq_n_f32(scale),
				one = vdupq_n_f32(1.0f);
	int64_t		full = n - n % 4;
	int64_t		i;

	for (i = 0; i < full; i += 4)
	{
		float32x4_t p = exp_neon(vsubq_f32(vld1q_f32(x + i), vlse));

		if (target >= i && target < i + 4)
		{
			uint32x4_t	hit = vceqq_s32(lane, vdupq_n_s32((int32_t) (target - i)));

			p = vsubq_f32(p, vreinterpretq_f32_u32(vandq_u32(hit, vreinterpretq_u32_f32(one))));
		}
		vst1q_f32(dx + i, accumulate ? vfmaq_f32(vld1q_f32(dx + i), vscale, p)
				  : vmulq_f32(vscale, p));
	}
	row_backward_scalar(x + i, n - i, lse, (int32_t) (target - i), scale, dx + i, accumulate);
}

const cross_entropy_kernels cross_entropy_neon_kernels = {
	logsumexp_neon, row_backward_neon
};

#endif							/* LLM_NEON */

/*
 * Each task writes its own partial sum; the caller adds them in task order,
 * so the total is the same at any thread count.  The number of tasks is
 * capped so the partials fit in the context without a malloc.
 */
#define CE_MAX_TASKS 256

typedef struct
{
	const float *logits;
	const int32_t *targets;
	int64_t		vocab;
	int64_t		grain;
	float	   *lse;
	const cross_entropy_kernels *k;
	double		loss_sum[CE_MAX_TASKS];
	int64_t		counted[CE_MAX_TASKS];
} cross_entropy_ctx;

static void
cross_entropy_task(void *arg, int64_t begin, int64_t end)
{
	cross_entropy_ctx *c = arg;
	int64_t		task = begin / c->grain;
	double		loss_sum = 0.0;
	int64_t		counted = 0;

	for (int64_t r = begin; r < end; r++)
	{
		const float *x = c->logits + r * c->vocab;
		int32_t		target = c->targets[r];
		double		lse;

		if (target < 0 && c->lse == NULL)
			continue;			/* ignore_index, and no lse wanted */
		lse = c->k->logsumexp(x, c->vocab);
		if (c->lse)
			c->lse[r] = (float) lse;
		if (target >= 0)
		{
			/* -log softmax(x)[target] = logsumexp(x) - x[target] */
			loss_sum += lse - x[target];
			counted++;
		}
	}
	c->loss_sum[task] = loss_sum;
	c->counted[task] = counted;
}

int
llm_cross_entropy(const float *logits, const int32_t *targets,
				  int64_t rows, int64_t vocab, double *loss, int64_t *counted,
				  float *lse)
{
	cross_entropy_ctx c;		/* 4 KB of partials: fine on the stack */
	int64_t		grain = rows_per_task(vocab);
	int64_t		ntasks;
	double		loss_sum = 0.0;
	int64_t		total = 0;
	int			status;

	*loss = NAN;
	*counted = 0;
	if (rows <= 0)
		return LLM_OK;
	if (grain * CE_MAX_TASKS < rows)
		grain = ceil_div(rows, CE_MAX_TASKS);
	ntasks = ceil_div(rows, grain);

	c.logits = logits;
	c.targets = targets;
	c.vocab = vocab;
	c.grain = grain;
	c.lse = lse;
	c.k = llm_kernels->cross_entropy;
	status = llm_parallel_for(rows, grain, cross_entropy_task, &c);
	if (status != LLM_OK)
		return status;

	for (int64_t t = 0; t < ntasks; t++)
	{
		loss_sum += c.loss_sum[t];
		total += c.counted[t];
	}
	*counted = total;
	if (total > 0)
		*loss = loss_sum / (double) total;
	return LLM_OK;
}

typedef struct
{
	const float *logits;
	const int32_t *targets;
	const float *lse;
	int64_t		vocab;
	float		scale;
	float	   *dlogits;
	const cross_entropy_kernels *k;
} cross_entropy_backward_ctx;

static void
cross_entropy_backward_task(void *arg, int64_t begin, int64_t end)
{
	const cross_entropy_backward_ctx *c = arg;

	for (int64_t r = begin; r < end; r++)
	{
		const float *x = c->logits + r * c->vocab;

		if (c->targets[r] < 0)
			continue;			/* ignored: no gradient */
		c->k->row_backward(x, c->vocab,
						   c->lse ? c->lse[r] : (float) c->k->logsumexp(x, c->vocab),
						   c->targets[r], c->scale, c->dlogits + r * c->vocab, 1);
	}
}

int
llm_cross_entropy_backward(const float *logits, const int32_t *targets,
						   const float *lse, int64_t rows, int64_t vocab,
						   float scale, float *dlogits)
{
	cross_entropy_backward_ctx c = {logits, targets, lse, vocab, scale, dlogits,
	llm_kernels->cross_entropy};

	if (vocab <= 0)
		return LLM_OK;
	return llm_parallel_for(rows, rows_per_task(vocab), cross_entropy_backward_task, &c);
}

/*
 * The fused lm_head + cross-entropy of training (as Liger-Kernel's fused
 * linear cross-entropy and llm.c's fused classifier): the logits x @ w^T
 * exist one chunk of rows at a time, never [rows, vocab] at once.  Per
 * chunk:
 *
 *   logits = x_c @ w^T                       [n, vocab], the chunk buffer
 *   per row: lse, loss_r = lse - logits[t], then in place
 *            logits <- (softmax - onehot(t)) / counted   (0 for ignored rows)
 *   dx_c  += logits @ w                      [n, dim]
 *   dw    += logits^T @ x_c                  [vocab, dim]
 *
 * The chunk height depends on vocab and rows only (the bits of dw's sums
 * depend on it), as nearly equal chunks of at most LCE_CHUNK_FLOATS logits:
 * bit-identical at any thread count.  Each row's loss goes to its own slot
 * and the slots are added in row order.
 */
/*
 * 32 MB: B=4, T=64 rows of GPT-2's vocabulary are two chunks of 128 rows.
 * Smaller chunks save memory but cost time: each chunk's products pack all
 * of w again, for fewer rows (chunks of 64 rows took 1.7x the CPU time of
 * the three products at gpt2-small's width; 128 rows, 1.1x).
 */
#ifndef LCE_CHUNK_FLOATS
#define LCE_CHUNK_FLOATS ((int64_t) 8 << 20)
#endif

typedef struct
{
	float	   *logits;			/* [n, vocab] of the chunk */
	const int32_t *targets;		/* the chunk's */
	int64_t		vocab;
	float		scale;			/* 1 / counted */
	int			grad;			/* turn the logits into their gradient */
	double	   *row_loss;		/* [n] */
	const cross_entropy_kernels *k;
} lce_ctx;

static void
lce_rows_task(void *arg, int64_t begin, int64_t end)
{
	const lce_ctx *c = arg;

	for (int64_t r = begin; r < end; r++)
	{
		float	   *x = c->logits + r * c->vocab;
		int32_t		target = c->targets[r];
		double		lse;

		c->row_loss[r] = 0.0;
		if (target < 0)
		{
			if (c->grad)
				memset(x, 0, sizeof(float) * (size_t) c->vocab);	/* ignored: no gradient */
			continue;
		}
		lse = c->k->logsumexp(x, c->vocab);
		c->row_loss[r] = lse - x[target];	/* read before x becomes the gradient */
		if (c->grad)
			c->k->row_backward(x, c->vocab, (float) lse, target, c->scale, x, 0);
	}
}

int
llm_linear_cross_entropy(const float *x, const float *w, const int32_t *targets,
						 int64_t rows, int64_t dim, int64_t vocab, int bf16,
						 double *loss, int64_t *counted, float *dx, float *dw)
{
	int64_t		height = LCE_CHUNK_FLOATS / (vocab > 0 ? vocab : 1);
	int64_t		n_chunks;
	int64_t		total = 0;
	double		loss_sum = 0.0;
	lce_ctx		c = {.vocab = vocab, .grad = dx != NULL || dw != NULL,
	.k = llm_kernels->cross_entropy};
	int			status = LLM_OK;

	*loss = NAN;
	*counted = 0;
	for (int64_t r = 0; r < rows; r++)
		total += targets[r] >= 0;
	if (rows <= 0 || vocab <= 0 || total == 0)
		return LLM_OK;
	n_chunks = ceil_div(rows, height > 0 ? height : 1);
	height = ceil_div(rows, n_chunks);
	c.scale = (float) (1.0 / (double) total);
	c.logits = malloc(sizeof(float) * (size_t) (height * vocab));
	c.row_loss = malloc(sizeof(double) * (size_t) height);
	if (c.logits == NULL || c.row_loss == NULL)
		status = LLM_NOMEM;

	for (int64_t r0 = 0; r0 < rows && status == LLM_OK; r0 += height)
	{
		int64_t		n = rows - r0 < height ? rows - r0 : height;
		const float *xc = x + r0 * dim;

		c.targets = targets + r0;
		status = llm_matmul(xc, w, NULL, c.logits, n, dim, vocab, 0, 1);
		if (bf16 && status == LLM_OK)
			llm_round_bf16_array(c.logits, c.logits, n * vocab);
		if (status == LLM_OK)
			status = llm_parallel_for(n, rows_per_task(vocab), lce_rows_task, &c);
		if (status != LLM_OK)
			break;
		if (bf16 && c.grad)		/* the logits' gradient, now in c.logits */
			llm_round_bf16_array(c.logits, c.logits, n * vocab);
		for (int64_t r = 0; r < n; r++)
			loss_sum += c.row_loss[r];
		if (dx)
			status = llm_matmul_acc(c.logits, w, dx + r0 * dim, n, vocab, dim, 0, 0);
		if (dw && status == LLM_OK)
			status = llm_matmul_acc(c.logits, xc, dw, vocab, n, dim, 1, 0);
	}
	free(c.logits);
	free(c.row_loss);
	if (status == LLM_OK)
	{
		*counted = total;
		*loss = loss_sum / (double) total;
	}
	return status;
}
