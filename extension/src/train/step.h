/*
 * step.h -- a batch of token sequences and the gradients of a training
 * state on it (step.c; the math is gpt2/forward.c and gpt2/backward.c).
 */
#ifndef PG_LLM_TRAIN_STEP_H
#define PG_LLM_TRAIN_STEP_H

#include "postgres.h"

#include "utils/array.h"

#include "gpt2/model_cache.h"
#include "train/state.h"

/* B sequences of T tokens and their targets, row-major [B, T]. */
typedef struct LlmBatch
{
	int			B,
				T;
	const int32 *tokens;
	const int32 *targets;		/* -100: no loss at that position */
} LlmBatch;

/*
 * The batch of int[] (one sequence) or int[][] arrays, checked against the
 * model: same shape, T <= n_positions, ids in the vocabulary, targets also
 * -100, at least one target counted.  ERROR 22023 (22004 for NULLs) naming
 * the bad value.  The ids point into the arrays.
 */
extern LlmBatch llm_batch_from_arrays(const char *who, const Gpt2Config *cfg, const char *model,
									  ArrayType *tokens, ArrayType *targets);

/*
 * st->grad = d(mean cross-entropy of the batch)/d(st->data); returns the
 * loss.  While pg_llm.autograd_mode records, the batch's forward also goes
 * on the tape (gpt2/tape.h).
 */
extern double llm_train_state_gradients(LlmTrainState *st, const LlmBatch *batch);

#endif							/* PG_LLM_TRAIN_STEP_H */
