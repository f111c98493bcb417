/*
 * elementwise.c -- add, mul, scale and transpose, and their backward;
 * rounding to bf16 precision.
 *
 * Cheap, memory-bound maps: they run on the calling thread, in plain C;
 * there is no SIMD variant to choose, but for the rounding (dispatch.h's
 * round_bf16: the compiler does not vectorise bf16.h's branch on NaN).  The backward's loops go through
 * simd.h's row updates, which the compiler vectorises for the baseline
 * target.
 *
 * Broadcasting: b has bn elements and is added to (multiplied into) each
 * of the n / bn rows of a.  Its gradient is a sum over those rows, taken
 * per column in row order into a local sum that is then added to db, so
 * a second call adds exactly the same amount again.
 */
#include "kernels.h"

#include "bf16.h"
#include "dispatch.h"
#include "simd.h"

#if LLM_X86
#include <immintrin.h>
#endif

void
llm_add(const float *a, const float *b, float *y, int64_t n, int64_t bn)
{
	if (bn <= 0)
		bn = n;
	for (int64_t row = 0; row < n; row += bn)
		for (int64_t i = 0; i < bn; i++)
			y[row + i] = a[row + i] + b[i];
}

void
llm_mul(const float *a, const float *b, float *y, int64_t n, int64_t bn)
{
	if (bn <= 0)
		bn = n;
	for (int64_t row = 0; row < n; row += bn)
		for (int64_t i = 0; i < bn; i++)
			y[row + i] = a[row + i] * b[i];
}

void
llm_scale(const float *x, float s, float *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = s * x[i];
}

static void
round_bf16_scalar(const float *x, float *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = llm_round_bf16(x[i]);
}

const round_bf16_kernels round_bf16_scalar_kernels = {round_bf16_scalar};

#if LLM_X86
/*
 * llm_round_bf16 on 8 floats at a time, on their bits: add 0x7fff plus the
 * lowest kept bit (ties to even), clear the 16 bits dropped; a NaN keeps
 * its top 16 bits and becomes quiet (0x00400000), as bf16.h does.
 */
TARGET_AVX2 static void
round_bf16_avx2(const float *x, float *y, int64_t n)
{
	const __m256i magnitude = _mm256_set1_epi32(0x7fffffff),
				infinity = _mm256_set1_epi32(0x7f800000),
				half = _mm256_set1_epi32(0x7fff),
				one = _mm256_set1_epi32(1),
				quiet = _mm256_set1_epi32(0x00400000),
				kept = _mm256_set1_epi32((int) 0xffff0000u);
	int64_t		i = 0;

	for (; i + 8 <= n; i += 8)
	{
		__m256i		u = _mm256_loadu_si256((const __m256i *) (x + i));
		__m256i		odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
		__m256i		rounded = _mm256_add_epi32(u, _mm256_add_epi32(half, odd));
		/* |u| > infinity's bits: a NaN (a signed compare: both are below 2^31) */
		__m256i		nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, magnitude), infinity);

		rounded = _mm256_blendv_epi8(rounded, _mm256_or_si256(u, quiet), nan);
		_mm256_storeu_si256((__m256i *) (y + i), _mm256_and_si256(rounded, kept));
	}
	round_bf16_scalar(x + i, y + i, n - i);
}

const round_bf16_kernels round_bf16_avx2_kernels = {round_bf16_avx2};
const round_bf16_kernels round_bf16_avx512_kernels = {round_bf16_avx2};
#endif							/* LLM_X86 */

#if LLM_NEON
/* aarch64 runs the scalar rounding (bf16 training gains no speed there yet) */
const round_bf16_kernels round_bf16_neon_kernels = {round_bf16_scalar};
#endif

void
llm_round_bf16_array(const float *x, float *y, int64_t n)
{
	llm_kernels->round_bf16->round(x, y, n);
}

/*
 * Transpose in square tiles: a TRANSPOSE_TILE^2 tile of x and of y both fit
 * in L1, so every cache line read or written is used whole.  y[j,i] = x[i,j],
 * or += when accumulating.
 */
#define TRANSPOSE_TILE 32

static void
transpose_tiled(const float *x, float *y, int64_t rows, int64_t cols, int accumulate)
{
	for (int64_t i0 = 0; i0 < rows; i0 += TRANSPOSE_TILE)
	{
		int64_t		i1 = MIN(i0 + TRANSPOSE_TILE, rows);

		for (int64_t j0 = 0; j0 < cols; j0 += TRANSPOSE_TILE)
		{
			int64_t		j1 = MIN(j0 + TRANSPOSE_TILE, cols);

			for (int64_t i = i0; i < i1; i++)
				for (int64_t j = j0; j < j1; j++)
					y[j * rows + i] = accumulate ? y[j * rows + i] + x[i * cols + j]
						: x[i * cols + j];
		}
	}
}

void
llm_transpose(const float *x, float *y, int64_t rows, int64_t cols)
{
	transpose_tiled(x, y, rows, cols, 0);
}

/* ---- backward ------------------------------------------------------------ */

/* Columns summed at a time, in a local array that stays in registers/L1. */
#define SUM_COLS 256

/*
 * y[j] += sum over the rows r of x[r,j] (times w[r,j] when w is not NULL),
 * x and w [rows, cols]: each column's sum runs in row order from 0.
 */
static void
sum_rows(const float *x, const float *w, float *y, int64_t rows, int64_t cols)
{
	for (int64_t j0 = 0; j0 < cols; j0 += SUM_COLS)
	{
		int64_t		width = MIN(SUM_COLS, cols - j0);
		float		sum[SUM_COLS] = {0};

		for (int64_t r = 0; r < rows; r++)
		{
			if (w)
				add_row_product(sum, x + r * cols + j0, w + r * cols + j0, width);
			else
				add_row(sum, x + r * cols + j0, width);
		}
		add_row(y + j0, sum, width);
	}
}

void
llm_add_backward(const float *dy, float *da, float *db, int64_t n, int64_t bn)
{
	if (bn <= 0)
		bn = n;
	if (da)
		add_row(da, dy, n);
	if (db && bn > 0)
		sum_rows(dy, NULL, db, n / bn, bn);
}

void
llm_mul_backward(const float *dy, const float *a, const float *b,
				 float *da, float *db, int64_t n, int64_t bn)
{
	if (bn <= 0)
		bn = n;
	if (da)
		for (int64_t row = 0; row < n; row += bn)
			add_row_product(da + row, dy + row, b, bn);
	if (db && bn > 0)
		sum_rows(dy, a, db, n / bn, bn);
}

void
llm_scale_backward(const float *dy, float s, float *dx, int64_t n)
{
	add_row_scaled(dx, s, dy, n);
}

void
llm_transpose_backward(const float *dy, float *dx, int64_t rows, int64_t cols)
{
	/* dy is the forward's y, [cols, rows] */
	transpose_tiled(dy, dx, cols, rows, 1);
}
