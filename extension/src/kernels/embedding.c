/*
 * embedding.c -- the embedding lookup, y[t,:] = w[ids[t],:], and its
 * backward, the scatter-add dw[ids[t],:] += dy[t,:].
 *
 * A row copy (row add) per id, on the calling thread: memory-bound, no
 * SIMD variant.  The backward adds the rows in id order t = 0, 1, ..., so a
 * row of dw that several ids share always sums in the same order.
 */
#include "kernels.h"

#include <string.h>

#include "simd.h"

void
llm_embedding(const float *w, const int32_t *ids, float *y,
			  int64_t n_ids, int64_t dim)
{
	for (int64_t t = 0; t < n_ids; t++)
		memcpy(y + t * dim, w + (int64_t) ids[t] * dim, (size_t) dim * sizeof(float));
}

void
llm_embedding_backward(const int32_t *ids, const float *dy, float *dw,
					   int64_t n_ids, int64_t dim)
{
	for (int64_t t = 0; t < n_ids; t++)
		add_row(dw + (int64_t) ids[t] * dim, dy + t * dim, dim);
}
