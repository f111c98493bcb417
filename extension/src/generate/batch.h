/*
 * batch.h -- decode batching (batch.c): the next-token steps of all the
 * sessions generating from the same model version at the same time are
 * computed together, one pass over the weights per step, and each session
 * gets the bits it would get alone.
 *
 *   g->state = gpt2_state_new(m, n_prompt, n_ctx);
 *   batch_share_cache(g->state);                       // before the prefill
 *   ... gpt2_forward(g->state, prompt, n_prompt) ...
 *   batch_decode_step(g->state, &g->last, g->logits);  // each decode step
 *   batch_end();                                       // the generation is over
 *
 * With pg_llm.decode_batching off (or on PostgreSQL 15-16) a step is
 * gpt2_forward(state, token, 1) then gpt2_logits(state, 0, 1, logits).
 */
#ifndef PG_LLM_GENERATE_BATCH_H
#define PG_LLM_GENERATE_BATCH_H

#include "postgres.h"

#include "gpt2/forward.h"

/*
 * Move `st`'s KV cache (empty yet) into shared memory, where the server of
 * a batch can reach it, when pg_llm.decode_batching is on; else (or when
 * there is no room) its steps run alone.
 */
extern void batch_share_cache(Gpt2State *st);

/* One decode step: `token` at the end of `st`'s cache, its logits [V] into `logits`. */
extern void batch_decode_step(Gpt2State *st, const int32 *token, float *logits);

/*
 * The generation is over: out of the batch; at DEBUG1, how many of its
 * steps were computed with other sessions'.
 */
extern void batch_end(void);

#endif							/* PG_LLM_GENERATE_BATCH_H */
