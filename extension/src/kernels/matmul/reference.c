/*
 * reference.c -- the scalar reference of llm_matmul: plain loops, used on
 * non-x86 builds and when llm_set_isa(LLM_ISA_SCALAR) forces it.
 */
#include "matmul_internal.h"

/* op(A)(m, k), for the reference code */
static inline float
get_a(const mm_ctx *c, int64_t m, int64_t k)
{
	return c->transA ? c->A[k * c->M + m] : c->A[m * c->K + k];
}

/* B's element at index i of its storage, widened when it is bf16 */
static inline float
get_b(const mm_ctx *c, int64_t i)
{
	return c->B16 ? llm_bf16_to_float(c->B16[i]) : c->B[i];
}

/*
 * Rows [r0, r1) of C: c[i,j] = sum_k a[i,k] * b[k,j] in increasing k, then
 * + bias[j]; with accumulate, the sum starts from c[i,j].  Loops are ordered so the inner one walks contiguous memory.
 */
static void
scalar_rows(void *arg, int64_t r0, int64_t r1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		N = c->N,
				K = c->K;
	int64_t		i,
				j,
				k;

	for (i = r0; i < r1; i++)
	{
		float	   *ci = c->C + i * N;

		if (c->transB)
		{
			/* B stored [N,K]: each c[i,j] is a dot product of two rows */
			for (j = 0; j < N; j++)
			{
				float		s = 0.0f;

				for (k = 0; k < K; k++)
					s += get_a(c, i, k) * get_b(c, j * K + k);
				ci[j] = c->accumulate ? ci[j] + s : s;
			}
		}
		else
		{
			/* B stored [K,N]: c[i,:] += a[i,k] * b[k,:] */
			if (!c->accumulate)
				for (j = 0; j < N; j++)
					ci[j] = 0.0f;
			for (k = 0; k < K; k++)
			{
				float		a = get_a(c, i, k);

				for (j = 0; j < N; j++)
					ci[j] += a * get_b(c, k * N + j);
			}
		}
		if (c->bias)
			for (j = 0; j < N; j++)
				ci[j] += c->bias[j];
	}
}

int
matmul_scalar(mm_ctx *c)
{
	/* about 256K multiply-adds per task */
	int64_t		grain = MAX(1, (1 << 18) / MAX(1, c->K * c->N));

	return llm_parallel_for(c->M, grain, scalar_rows, c);
}
