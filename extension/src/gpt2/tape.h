/*
 * tape.h -- the autograd tape of a GPT-2 forward, built after the
 * forward from the activations it saved (tape.c), never by running it
 * again:
 *
 *   gpt2_tape_batch(b);          a training step's batch (after gpt2_batch_forward)
 *   gpt2_tape_loss(b);           llm_loss: the batch of its one sequence
 *   gpt2_tape_logits(m, acts, tokens, T, last_only, logits);     llm_logits
 *
 * Each sequence goes on the tape as the SQL ops it is made of, the weights
 * as leaves named as in llm_param: llm_embedding + llm_slice of wpe +
 * llm_add; per block llm_layernorm, llm_matmul then llm_add of the bias (a
 * Conv1D), llm_attention_qkv, llm_gelu, llm_add for the residuals; ln_f;
 * the lm_head llm_matmul; llm_cross_entropy.  In mode full the values are
 * the saved activations; a product before its bias, which the forward
 * never kept, is recomputed (mode meta records no values and computes
 * nothing).
 */
#ifndef PG_LLM_GPT2_TAPE_H
#define PG_LLM_GPT2_TAPE_H

#include "postgres.h"

#include "gpt2/forward.h"

/*
 * Empty the tape and record the batch's forward: each sequence that has a
 * counted target, as llm_loss records it, the sequences sharing the
 * weights' leaves, and the batch loss -- the mean over every counted
 * target, as the step computes it -- as sum_b llm_scale(loss_b, counted_b
 * / counted).
 */
extern void gpt2_tape_batch(const Gpt2Batch *b);

/* Append the forward and loss of a batch of one sequence (llm_loss). */
extern void gpt2_tape_loss(const Gpt2Batch *b);

/*
 * Append llm_logits's forward of tokens [T] saved in the store `acts`, and
 * its lm_head over every row or, last_only, the last (the output `logits`
 * findable by value, so that a later op on it links to it).
 */
extern void gpt2_tape_logits(const Gpt2Model *m, const Gpt2Activations *acts,
							 const int32 *tokens, int64 T, bool last_only,
							 const float *logits);

#endif							/* PG_LLM_GPT2_TAPE_H */
