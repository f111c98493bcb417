/*
 * simd.h -- what the kernel files share: the target attributes that compile
 * one function for AVX2+FMA or AVX-512 inside a baseline x86-64 build (the
 * variant is picked at run time, see dispatch.h), the horizontal reductions,
 * tail masks and vector exp of those variants, the same helpers for ARM's
 * NEON (Advanced SIMD, in every aarch64 core: no target attribute needed),
 * and a few integer helpers.
 *
 * One definition of each: a kernel file that needs one of these includes
 * this header instead of writing its own.
 */
#ifndef PG_LLM_SIMD_H
#define PG_LLM_SIMD_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* LLM_X86: the AVX2 and AVX-512 variants are compiled (else only scalar). */
#if defined(__x86_64__) && defined(__GNUC__)
#define LLM_X86 1
#else
#define LLM_X86 0
#endif

/* LLM_NEON: the NEON variants are compiled (aarch64: Apple Silicon, Graviton, Pi). */
#if defined(__aarch64__) && defined(__GNUC__)
#define LLM_NEON 1
#else
#define LLM_NEON 0
#endif

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

static inline int64_t
ceil_div(int64_t a, int64_t b)
{
	return (a + b - 1) / b;
}

/* a rounded up to a multiple of b */
static inline int64_t
round_up(int64_t a, int64_t b)
{
	return ceil_div(a, b) * b;
}

/*
 * The causal mask of softmax and attention: of Tq queries over Tk keys,
 * query i sits at position (Tk - Tq) + i and sees the keys up to there.
 * Returns how many, 0 .. Tk.
 */
static inline int64_t
causal_keys(int64_t i, int64_t Tq, int64_t Tk)
{
	int64_t		n = i + (Tk - Tq) + 1;

	return n < 0 ? 0 : n > Tk ? Tk : n;
}

/*
 * malloc of n floats aligned to 64 bytes (a cache line, a zmm vector);
 * *raw receives the pointer to free.  NULL (and *raw NULL) when malloc
 * fails.
 */
static inline float *
malloc_aligned(size_t nfloats, void **raw)
{
	*raw = malloc(nfloats * sizeof(float) + 64);
	return *raw ? (float *) (((uintptr_t) *raw + 63) & ~(uintptr_t) 63) : NULL;
}

/*
 * Row updates for the plain-C kernels: y[0, n) += x (or x * w, or s * x).
 * gcc -O2 vectorises a loop only when its trip count is a known multiple
 * of the vector width (-fvect-cost-model=very-cheap): a plain loop over n
 * would stay scalar, so these go 16 at a time, then the rest.  y must not
 * overlap x or w.
 */
static inline void
add_row(float *restrict y, const float *restrict x, int64_t n)
{
	int64_t		i = 0;

	for (; i + 16 <= n; i += 16)
		for (int j = 0; j < 16; j++)
			y[i + j] += x[i + j];
	for (; i < n; i++)
		y[i] += x[i];
}

static inline void
add_row_product(float *restrict y, const float *restrict x, const float *restrict w,
				int64_t n)
{
	int64_t		i = 0;

	for (; i + 16 <= n; i += 16)
		for (int j = 0; j < 16; j++)
			y[i + j] += x[i + j] * w[i + j];
	for (; i < n; i++)
		y[i] += x[i] * w[i];
}

static inline void
add_row_scaled(float *restrict y, float s, const float *restrict x, int64_t n)
{
	int64_t		i = 0;

	for (; i + 16 <= n; i += 16)
		for (int j = 0; j < 16; j++)
			y[i + j] += s * x[i + j];
	for (; i < n; i++)
		y[i] += s * x[i];
}

/*
 * Work per task of the row kernels, in floats: big enough that a task
 * dwarfs the cost of handing it out, small enough that two threads get
 * several tasks each.
 */
#define TASK_FLOATS 65536

/* Rows per task so that a task handles about TASK_FLOATS floats. */
static inline int64_t
rows_per_task(int64_t cols)
{
	return cols >= TASK_FLOATS ? 1 : TASK_FLOATS / (cols > 0 ? cols : 1);
}

/* ---- exp, of the SIMD variants ------------------------------------------ */

/*
 * exp(x) = 2^n * exp(r) with n = round(x / ln 2) and |r| <= ln(2)/2.
 * r = x - n*ln2 is taken in two steps (ln2 = LN2_HI + LN2_LO, LN2_HI with
 * few mantissa bits so n*LN2_HI is exact); exp(r) is the Cephes
 * polynomial 1 + r + r^2 * P(r), within 1.3 ulp of the true value.  Inputs
 * are clamped to [EXP_MIN, EXP_MAX], far enough out that the result still
 * rounds to 0 or overflows to +inf; NaN passes through (max/min return
 * their second operand on NaN).
 */
#define EXP_MIN		-110.0f
#define EXP_MAX		100.0f
#define LOG2E		1.44269504088896341f
#define LN2_HI		0.693359375f
#define LN2_LO		-2.12194440e-4f
#define EXP_P0		1.9875691500e-4f
#define EXP_P1		1.3981999507e-3f
#define EXP_P2		8.3334519073e-3f
#define EXP_P3		4.1665795894e-2f
#define EXP_P4		1.6666665459e-1f
#define EXP_P5		5.0000001201e-1f

#if LLM_X86
#include <immintrin.h>

#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#define TARGET_AVX512 __attribute__((target("avx512f")))

/* ---- horizontal reductions ----------------------------------------------- */

/* Sum of the 8 lanes of v. */
TARGET_AVX2 static inline float
hsum_avx2(__m256 v)
{
	__m128		s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/* Largest of the 8 lanes of v. */
TARGET_AVX2 static inline float
hmax_avx2(__m256 v)
{
	__m128		s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/* Sum of the 4 lanes of v. */
TARGET_AVX2 static inline double
hsum_pd_avx2(__m256d v)
{
	__m128d		s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));

	return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* (AVX-512 has _mm512_reduce_add_ps / _mm512_reduce_max_ps.) */

/* ---- tail masks ------------------------------------------------------------ */

/* AVX-512 mask of the first n of 16 lanes (n <= 0: none, n >= 16: all). */
static inline __mmask16
mask16(int64_t n)
{
	return n >= 16 ? (__mmask16) 0xFFFF : n <= 0 ? (__mmask16) 0 :
		(__mmask16) ((1u << n) - 1);
}

/* AVX2 mask (for maskload/maskstore) of the first n of 8 lanes, n clamped. */
TARGET_AVX2 static inline __attribute__((always_inline)) __m256i
mask8(int64_t n)
{
	const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);

	return _mm256_cmpgt_epi32(_mm256_set1_epi32((int) MAX(-1, MIN(8, n))), lane);
}

/* ---- the largest of a row ------------------------------------------------ */

/* Largest of x[0, n), n > 0 (the shift of softmax and logsumexp). */
TARGET_AVX2 static inline float
max_avx2(const float *x, int64_t n)
{
	__m256		vmax = _mm256_set1_ps(-INFINITY);
	int64_t		full = n - n % 8;
	int64_t		i;
	float		max;

	for (i = 0; i < full; i += 8)
		vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
	max = hmax_avx2(vmax);
	for (; i < n; i++)
		max = x[i] > max ? x[i] : max;
	return max;
}

/* Largest of x[0, n), n > 0. */
TARGET_AVX512 static inline float
max_avx512(const float *x, int64_t n)
{
	const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
	__m512		vmax = neg_inf;
	__mmask16	m = mask16(n % 16);
	int64_t		full = n - n % 16;
	int64_t		i;

	for (i = 0; i < full; i += 16)
		vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
	if (m)
		vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(neg_inf, m, x + i));
	return _mm512_reduce_max_ps(vmax);
}


TARGET_AVX512 static inline __m512
exp_avx512(__m512 x)
{
	__m512		n,
				r,
				p;

	x = _mm512_min_ps(_mm512_set1_ps(EXP_MAX), _mm512_max_ps(_mm512_set1_ps(EXP_MIN), x));
	n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
							 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
	p = _mm512_set1_ps(EXP_P0);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	/* p * 2^n, with correct overflow to inf and gradual underflow */
	return _mm512_scalef_ps(p, n);
}

TARGET_AVX2 static inline __m256
exp_avx2(__m256 x)
{
	__m256		n,
				r,
				p;
	__m256i		ni,
				half1,
				half2;

	x = _mm256_min_ps(_mm256_set1_ps(EXP_MAX), _mm256_max_ps(_mm256_set1_ps(EXP_MIN), x));
	n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
						_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
	p = _mm256_set1_ps(EXP_P0);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));

	/*
	 * Multiply by 2^n as 2^(n/2) * 2^(n - n/2): n runs from -159 to 145,
	 * too wide for one float exponent, but each half is a normal float, and
	 * the last multiply rounds once to inf, a subnormal or 0 as it should.
	 */
	ni = _mm256_cvtps_epi32(n);
	half1 = _mm256_srai_epi32(ni, 1);
	half2 = _mm256_sub_epi32(ni, half1);
	half1 = _mm256_slli_epi32(_mm256_add_epi32(half1, _mm256_set1_epi32(127)), 23);
	half2 = _mm256_slli_epi32(_mm256_add_epi32(half2, _mm256_set1_epi32(127)), 23);
	p = _mm256_mul_ps(p, _mm256_castsi256_ps(half1));
	return _mm256_mul_ps(p, _mm256_castsi256_ps(half2));
}

#endif							/* LLM_X86 */

#if LLM_NEON
#include <arm_neon.h>

/*
 * NEON vectors hold 4 floats.  There are no masked loads: the NEON kernels
 * do the last n % 4 elements with the scalar code, as the AVX2 ones do
 * where a mask would not pay.  vaddvq_f32/vmaxvq_f32 reduce the 4 lanes.
 */

/* Largest of x[0, n), n > 0. */
static inline float
max_neon(const float *x, int64_t n)
{
	float32x4_t vmax = vdupq_n_f32(-INFINITY);
	int64_t		full = n - n % 4;
	int64_t		i;
	float		max;

	for (i = 0; i < full; i += 4)
		vmax = vmaxq_f32(vmax, vld1q_f32(x + i));
	max = vmaxvq_f32(vmax);
	for (; i < n; i++)
		max = x[i] > max ? x[i] : max;
	return max;
}

/*
 * exp of 4 values, the same polynomial and clamps as exp_avx2.  NEON's
 * vmaxq/vminq return NaN when either operand is NaN, so NaN passes through
 * too.  vfmsq_f32(a, b, c) is a - b * c, one rounding.
 */
static inline float32x4_t
exp_neon(float32x4_t x)
{
	float32x4_t n,
				r,
				p;
	int32x4_t	ni,
				half1,
				half2;

	x = vminq_f32(vdupq_n_f32(EXP_MAX), vmaxq_f32(vdupq_n_f32(EXP_MIN), x));
	n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
	r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
	r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
	p = vdupq_n_f32(EXP_P0);
	p = vfmaq_f32(vdupq_n_f32(EXP_P1), p, r);
	p = vfmaq_f32(vdupq_n_f32(EXP_P2), p, r);
	p = vfmaq_f32(vdupq_n_f32(EXP_P3), p, r);
	p = vfmaq_f32(vdupq_n_f32(EXP_P4), p, r);
	p = vfmaq_f32(vdupq_n_f32(EXP_P5), p, r);
	p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));

	/* p * 2^n in two halves, as exp_avx2 */
	ni = vcvtq_s32_f32(n);
	half1 = vshrq_n_s32(ni, 1);
	half2 = vsubq_s32(ni, half1);
	half1 = vshlq_n_s32(vaddq_s32(half1, vdupq_n_s32(127)), 23);
	half2 = vshlq_n_s32(vaddq_s32(half2, vdupq_n_s32(127)), 23);
	p = vmulq_f32(p, vreinterpretq_f32_s32(half1));
	return vmulq_f32(p, vreinterpretq_f32_s32(half2));
}

#endif							/* LLM_NEON */

#endif							/* PG_LLM_SIMD_H */
