/*
 * embedding.c -- the embedding lookup, y[t,:] = w[ids[t],:].
 *
 * A row copy per id, on the calling thread (memory-bound, no SIMD variant).
 */
#include "kernels.h"

#include <string.h>

void
llm_embedding(const float *w, const int32_t *ids, float *y,
			  int64_t n_ids, int64_t dim)
{
	for (int64_t t = 0; t < n_ids; t++)
		memcpy(y + t * dim, w + (int64_t) ids[t] * dim, (size_t) dim * sizeof(float));
}
