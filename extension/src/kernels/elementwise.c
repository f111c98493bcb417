/*
 * elementwise.c -- add, mul, scale and transpose.
 *
 * Cheap, memory-bound maps: they run on the calling thread, in plain C
 * that the compiler vectorises for the baseline target; there is no SIMD
 * variant to choose.
 */
#include "kernels.h"

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

/*
 * Transpose in square tiles: a TRANSPOSE_TILE^2 tile of x and of y both fit
 * in L1, so every cache line read or written is used whole.
 */
#define TRANSPOSE_TILE 32

void
llm_transpose(const float *x, float *y, int64_t rows, int64_t cols)
{
	for (int64_t i0 = 0; i0 < rows; i0 += TRANSPOSE_TILE)
	{
		int64_t		i1 = i0 + TRANSPOSE_TILE < rows ? i0 + TRANSPOSE_TILE : rows;

		for (int64_t j0 = 0; j0 < cols; j0 += TRANSPOSE_TILE)
		{
			int64_t		j1 = j0 + TRANSPOSE_TILE < cols ? j0 + TRANSPOSE_TILE : cols;

			for (int64_t i = i0; i < i1; i++)
				for (int64_t j = j0; j < j1; j++)
					y[j * rows + i] = x[i * cols + j];
		}
	}
}
