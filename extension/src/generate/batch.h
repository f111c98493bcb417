/*
 * batch.h -- decode batching (batch.c): the next-token steps of all the
 * sessions generating from the same model version at the same time share
 * one pass over the weights, and each session gets the bits it would get
 * alone.
 *
 *   batch_decode_step(g->state, &g->last, g->logits);
 *
 * is gpt2_forward(state, token, 1) then gpt2_logits(state, 0, 1, logits),
 * with the products by the weight matrices computed together with the
 * other sessions' (pg_llm.decode_batching = on, PostgreSQL 17 and later);
 * everything else -- the KV cache, sampling, errors, cancel -- stays in the
 * session.
 */
#ifndef PG_LLM_GENERATE_BATCH_H
#define PG_LLM_GENERATE_BATCH_H

#include "postgres.h"

#include "gpt2/forward.h"

/* One decode step: `token` at the end of `st`'s cache, its logits [V] into `logits`. */
extern void batch_decode_step(Gpt2State *st, const int32 *token, float *logits);

/*
 * At DEBUG1: how many of this session's products by the weights went in a
 * batch with other sessions since the last report (a generation's end).
 */
extern void batch_report(void);

#endif							/* PG_LLM_GENERATE_BATCH_H */
