/*
 * gelu.c -- GELU, tanh approximation (GPT-2's "gelu_new"), and its
 * backward.
 *
 *   gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *           = x * sigmoid(2u) = x / (1 + exp(-2u))
 *
 * The last form needs one exp and does not lose precision where
 * tanh(u) ~ -1.  So does the derivative: with e = exp(-2u) and
 * s = sigmoid(2u) = 1 / (1 + e) = 0.5 (1 + tanh(u)),
 *
 *   gelu'(x) = s + 2 x s (1 - s) u',   1 - s = e s,
 *   u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2),
 *
 * which is PyTorch's gelu(approximate='tanh') gradient,
 * 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) u', written with one exp.
 * In the tails it is 0 or 1: x is clamped to +-GELU_GRAD_X_MAX first (so
 * x^3 cannot overflow into inf * 0), and where -2u > GELU_GRAD_EXP_MAX
 * (x < -9.6) the gradient, below 4e-33, is 0.  NaN stays NaN.
 *
 * exp is libm's expf (scalar) or exp_avx2/exp_avx512 (simd.h).  Work is
 * cut into fixed blocks of TASK_FLOATS elements, so results never depend
 * on the thread count.
 */
#include "kernels.h"

#include <math.h>

#include "dispatch.h"
#include "simd.h"

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEF 0.044715f
#define GELU_GRAD_X_MAX 1e4f
#define GELU_GRAD_EXP_MAX 80.0f

static void
gelu_scalar(const float *x, float *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
	{
		float		u = GELU_SQRT_2_OVER_PI * (x[i] + GELU_COEF * (x[i] * x[i] * x[i]));

		y[i] = x[i] / (1.0f + expf(-2.0f * u));
	}
}

static inline float
gelu_grad_scalar(float x)
{
	/* (comparisons, not fminf/fmaxf: those would turn NaN into the bound) */
	float		xc = x > GELU_GRAD_X_MAX ? GELU_GRAD_X_MAX : x < -GELU_GRAD_X_MAX ? -GELU_GRAD_X_MAX : x;
	float		x2 = xc * xc;
	float		u = GELU_SQRT_2_OVER_PI * (xc + GELU_COEF * (x2 * xc));
	float		du = GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEF * x2);
	float		e,
				s;

	if (-2.0f * u > GELU_GRAD_EXP_MAX)
		return 0.0f;
	e = expf(-2.0f * u);
	s = 1.0f / (1.0f + e);
	return s + 2.0f * xc * s * (e * s) * du;
}

static void
gelu_backward_scalar(const float *x, const float *dy, float *dx, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dx[i] += dy[i] * gelu_grad_scalar(x[i]);
}

const gelu_kernels gelu_scalar_kernels = {gelu_scalar, gelu_backward_scalar};

#if LLM_X86

TARGET_AVX512 static inline __m512
gelu16(__m512 x)
{
	__m512		x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
	__m512		u = _mm512_mul_ps(_mm512_set1_ps(GELU_SQRT_2_OVER_PI),
								  _mm512_fmadd_ps(_mm512_set1_ps(GELU_COEF), x3, x));
	__m512		e = exp_avx512(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));

	return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

TARGET_AVX512 static void
gelu_avx512(const float *x, float *y, int64_t n)
{
	int64_t		i;

	for (i = 0; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, gelu16(_mm512_loadu_ps(x + i)));
	if (i < n)
	{
		__mmask16	m = mask16(n - i);

		_mm512_mask_storeu_ps(y + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
	}
}

/* gelu'(x) of 16 values */
TARGET_AVX512 static inline __m512
gelu_grad16(__m512 x)
{
	/* the bound first: min/max return their second operand on NaN */
	__m512		xc = _mm512_max_ps(_mm512_set1_ps(-GELU_GRAD_X_MAX),
								   _mm512_min_ps(_mm512_set1_ps(GELU_GRAD_X_MAX), x));
	__m512		x2 = _mm512_mul_ps(xc, xc);
	__m512		u = _mm512_mul_ps(_mm512_set1_ps(GELU_SQRT_2_OVER_PI),
								  _mm512_fmadd_ps(_mm512_set1_ps(GELU_COEF),
												  _mm512_mul_ps(x2, xc), xc));
	__m512		du = _mm512_mul_ps(_mm512_set1_ps(GELU_SQRT_2_OVER_PI),
								   _mm512_fmadd_ps(_mm512_set1_ps(3.0f * GELU_COEF), x2,
												   _mm512_set1_ps(1.0f)));
	__m512		z = _mm512_mul_ps(_mm512_set1_ps(-2.0f), u);
	__mmask16	tail = _mm512_cmp_ps_mask(z, _mm512_set1_ps(GELU_GRAD_EXP_MAX), _CMP_GT_OQ);
	__m512		e = exp_avx512(z);
	__m512		s = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
	__m512		t = _mm512_mul_ps(_mm512_mul_ps(_mm512_add_ps(xc, xc), s),
								  _mm512_mul_ps(_mm512_mul_ps(e, s), du));

	return _mm512_maskz_mov_ps((__mmask16) ~tail, _mm512_add_ps(s, t));
}

TARGET_AVX512 static void
gelu_backward_avx512(const float *x, const float *dy, float *dx, int64_t n)
{
	int64_t		i;

	for (i = 0; i + 16 <= n; i += 16)
		_mm512_storeu_ps(dx + i, _mm512_fmadd_ps(_mm512_loadu_ps(dy + i),
												 gelu_grad16(_mm512_loadu_ps(x + i)),
												 _mm512_loadu_ps(dx + i)));
	if (i < n)
	{
		__mmask16	m = mask16(n - i);

		_mm512_mask_storeu_ps(dx + i, m,
							  _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dy + i),
											  gelu_grad16(_mm512_maskz_loadu_ps(m, x + i)),
											  _mm512_maskz_loadu_ps(m, dx + i)));
	}
}

TARGET_AVX2 static void
gelu_avx2(const float *x, float *y, int64_t n)
{
	int64_t		i;

	for (i = 0; i + 8 <= n; i += 8)
	{
		__m256		v = _mm256_loadu_ps(x + i);
		__m256		x3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
		__m256		u = _mm256_mul_ps(_mm256_set1_ps(GELU_SQRT_2_OVER_PI),
									  _mm256_fmadd_ps(_mm256_set1_ps(GELU_COEF), x3, v));
		__m256		e = exp_avx2(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));

		_mm256_storeu_ps(y + i, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
	}
	gelu_scalar(x + i, y + i, n - i);
}

/* gelu'(x) of 8 values */
TARGET_AVX2 static inline __m256
gelu_grad8(__m256 x)
{
	__m256		xc = _mm256_max_ps(_mm256_set1_ps(-GELU_GRAD_X_MAX),
								   _mm256_min_ps(_mm256_set1_ps(GELU_GRAD_X_MAX), x));
	__m256		x2 = _mm256_mul_ps(xc, xc);
	__m256		u = _mm256_mul_ps(_mm256_set1_ps(GELU_SQRT_2_OVER_PI),
								  _mm256_fmadd_ps(_mm256_set1_ps(GELU_COEF),
												  _mm256_mul_ps(x2, xc), xc));
	__m256		du = _mm256_mul_ps(_mm256_set1_ps(GELU_SQRT_2_OVER_PI),
								   _mm256_fmadd_ps(_mm256_set1_ps(3.0f * GELU_COEF), x2,
												   _mm256_set1_ps(1.0f)));
	__m256		z = _mm256_mul_ps(_mm256_set1_ps(-2.0f), u);
	__m256		tail = _mm256_cmp_ps(z, _mm256_set1_ps(GELU_GRAD_EXP_MAX), _CMP_GT_OQ);
	__m256		e = exp_avx2(z);
	__m256		s = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
	__m256		t = _mm256_mul_ps(_mm256_mul_ps(_mm256_add_ps(xc, xc), s),
								  _mm256_mul_ps(_mm256_mul_ps(e, s), du));

	return _mm256_andnot_ps(tail, _mm256_add_ps(s, t));
}

TARGET_AVX2 static void
gelu_backward_avx2(const float *x, const float *dy, float *dx, int64_t n)
{
	int64_t		i;

	for (i = 0; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dx + i, _mm256_fmadd_ps(_mm256_loadu_ps(dy + i),
												 gelu_grad8(_mm256_loadu_ps(x + i)),
												 _mm256_loadu_ps(dx + i)));
	gelu_backward_scalar(x + i, dy + i, dx + i, n - i);
}

const gelu_kernels gelu_avx2_kernels = {gelu_avx2, gelu_backward_avx2};
const gelu_kernels gelu_avx512_kernels = {gelu_avx512, gelu_backward_avx512};

#endif							/* LLM_X86 */

#if LLM_NEON

/* NEON: the AVX2 loops with 4-float vectors */
static void
gelu_neon(const float *x, float *y, int64_t n)
{
	int64_t		i;

	for (i = 0; i + 4 <= n; i += 4)
	{
		float32x4_t v = vld1q_f32(x + i);
		float32x4_t x3 = vmulq_f32(vmulq_f32(v, v), v);
		float32x4_t u = vmulq_f32(vdupq_n_f32(GELU_SQRT_2_OVER_PI),
								  vfmaq_f32(v, vdupq_n_f32(GELU_COEF), x3));
		float32x4_t e = exp_neon(vmulq_f32(vdupq_n_f32(-2.0f), u));

		vst1q_f32(y + i, vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), e)));
	}
	gelu_scalar(x + i, y + i, n - i);
}

/* gelu'(x) of 4 values */
static inline float32x4_t
gelu_grad4(float32x4_t x)
{
	float32x4_t xc = vmaxq_f32(vdupq_n_f32(-GELU_GRAD_X_MAX),
							   vminq_f32(vdupq_n_f32(GELU_GRAD_X_MAX), x));
	float32x4_t x2 = vmulq_f32(xc, xc);
	float32x4_t u = vmulq_f32(vdupq_n_f32(GELU_SQRT_2_OVER_PI),
							  vfmaq_f32(xc, vdupq_n_f32(GELU_COEF), vmulq_f32(x2, xc)));
	float32x4_t du = vmulq_f32(vdupq_n_f32(GELU_SQRT_2_OVER_PI),
							   vfmaq_f32(vdupq_n_f32(1.0f), vdupq_n_f32(3.0f * GELU_COEF), x2));
	float32x4_t z = vmulq_f32(vdupq_n_f32(-2.0f), u);
	uint32x4_t	tail = vcgtq_f32(z, vdupq_n_f32(GELU_GRAD_EXP_MAX));
	float32x4_t e = exp_neon(z);
	float32x4_t s = vdivq_f32(vdupq_n_f32(1.0f), vaddq_f32(vdupq_n_f32(1.0f), e));
	float32x4_t t = vmulq_f32(vmulq_f32(vaddq_f32(xc, xc), s),
							  vmulq_f32(vmulq_f32(e, s), du));

	/* 0 where the tail is; NaN stays NaN (a NaN compares false) */
	return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(vaddq_f32(s, t)), tail));
}

static void
gelu_backward_neon(const float *x, const float *dy, float *dx, int64_t n)
{
	int64_t		i;

	for (i = 0; i + 4 <= n; i += 4)
		vst1q_f32(dx + i, vfmaq_f32(vld1q_f32(dx + i), vld1q_f32(dy + i),
									gelu_grad4(vld1q_f32(x + i))));
	gelu_backward_scalar(x + i, dy + i, dx + i, n - i);
}

const gelu_kernels gelu_neon_kernels = {gelu_neon, gelu_backward_neon};

#endif							/* LLM_NEON */

typedef struct
{
	const float *x;
	const float *dy;			/* backward only */
	float	   *y;				/* y, or dx for the backward */
	const gelu_kernels *k;
} gelu_ctx;

static void
gelu_task(void *arg, int64_t begin, int64_t end)
{
	const gelu_ctx *c = arg;

	c->k->forward(c->x + begin, c->y + begin, end - begin);
}

int
llm_gelu(const float *x, float *y, int64_t n)
{
	gelu_ctx	c = {x, NULL, y, llm_kernels->gelu};

	return llm_parallel_for(n, TASK_FLOATS, gelu_task, &c);
}

static void
gelu_backward_task(void *arg, int64_t begin, int64_t end)
{
	const gelu_ctx *c = arg;

	c->k->backward(c->x + begin, c->dy + begin, c->y + begin, end - begin);
}

int
llm_gelu_backward(const float *x, const float *dy, float *dx, int64_t n)
{
	gelu_ctx	c = {x, dy, dx, llm_kernels->gelu};

	return llm_parallel_for(n, TASK_FLOATS, gelu_backward_task, &c);
}
