/*
 * backward.h -- GPT-2's backward over every parameter (backward.c), from
 * the activation store of a training forward (forward.h):
 *
 *   loss = gpt2_batch_forward(b, tokens, targets, &st->grads);   (lm_head's part)
 *   gpt2_batch_backward(b, &st->grads);      // ACCUMULATES, as the kernels
 */
#ifndef PG_LLM_GPT2_BACKWARD_H
#define PG_LLM_GPT2_BACKWARD_H

#include "postgres.h"

#include "gpt2/forward.h"

/*
 * d(loss)/d(every parameter) of the batch's last forward, added into the
 * arena `grads` points into (the tied wte gets the lm_head's and the
 * embedding's).  The lm_head's share was added by that forward, given the
 * same grads; this adds the rest, from b->dlnf down.
 */
extern void gpt2_batch_backward(const Gpt2Batch *b, const Gpt2Model *grads);

#endif							/* PG_LLM_GPT2_BACKWARD_H */
