/*
 * batch.h -- the checks every training batch passes, wherever its rows come
 * from (int[] arguments in step.c, rows of llm_dataset in loop.c).
 */
#ifndef PG_LLM_TRAIN_BATCH_H
#define PG_LLM_TRAIN_BATCH_H

#include "postgres.h"

#include "gpt2/model_cache.h"
#include "train/step.h"

/*
 * ERROR 22023 naming the bad value unless 1 <= T <= n_positions, every
 * token id is in the vocabulary, every target too (or -100: no loss there),
 * and at least one target is not -100.
 */
extern void llm_batch_check(const char *who, const LlmBatch *b, const Gpt2Config *cfg,
							const char *model);

#endif							/* PG_LLM_TRAIN_BATCH_H */
