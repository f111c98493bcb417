/*
 * gelu.c -- GELU, tanh approximation (GPT-2's "gelu_new").
 *
 *   gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *           = x * sigmoid(2u) = x / (1 + exp(-2u))
 *
 * The last form needs one exp and does not lose precision where
 * tanh(u) ~ -1.  exp is libm's expf (scalar) or exp_avx2/exp_avx512
 * (simd.h).  Work is cut into fixed blocks of TASK_FLOATS elements, so
 * results never depend on the thread count.
 */
#include "kernels.h"

#include <math.h>

#include "dispatch.h"
#include "simd.h"

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEF 0.044715f

static void
gelu_scalar(const float *x, float *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
	{
		float		u = GELU_SQRT_2_OVER_PI * (x[i] + GELU_COEF * (x[i] * x[i] * x[i]));

		y[i] = x[i] / (1.0f + expf(-2.0f * u));
	}
}

const gelu_kernels gelu_scalar_kernels = {gelu_scalar};

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

const gelu_kernels gelu_avx2_kernels = {gelu_avx2};
const gelu_kernels gelu_avx512_kernels = {gelu_avx512};

#endif							/* LLM_X86 */

typedef struct
{
	const float *x;
	float	   *y;
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
	gelu_ctx	c = {x, y, llm_kernels->gelu};

	return llm_parallel_for(n, TASK_FLOATS, gelu_task, &c);
}
