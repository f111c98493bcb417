/*
 * attention_internal.h -- what the files of attention/ share.
 *
 *   forward.c        llm_attention: tasks of (head, chunk of queries), the
 *                    tiled (prefill) and row-by-row (decode) paths
 *   backward.c       llm_attention_backward: one task per head, blocks of
 *                    keys x queries, probabilities recomputed from lse
 *   inner_kernels.c  the per-ISA inner kernels both use (attention_kernels,
 *                    dispatch.h): the decode path's dot products and
 *                    weighted sums, the register tile, the backward's row
 *                    of P and dS
 */
#ifndef PG_LLM_ATTENTION_INTERNAL_H
#define PG_LLM_ATTENTION_INTERNAL_H

#include "../kernels.h"
#include "../dispatch.h"
#include "../simd.h"

/*
 * The register tile (attention_kernels.tile): TILE_ROWS x TILE_COLS floats
 * of output, whose right-hand matrix is read TILE_COLS floats a row.
 */
#define TILE_ROWS 8
#define TILE_COLS 32

#endif							/* PG_LLM_ATTENTION_INTERNAL_H */
