/*
 * batch.c -- the checks of a training batch (batch.h).
 */
#include "postgres.h"

#include "tensor/tensor.h"
#include "train/batch.h"

void
llm_batch_check(const char *who, const LlmBatch *b, const Gpt2Config *cfg, const char *model)
{
	int			n = b->B * b->T;
	int64		counted = 0;

	if (b->T < 1 || b->T > cfg->n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: sequences of %d tokens, but model \"%s\" takes 1 to %d (n_positions)",
						who, b->T, model, cfg->n_positions)));
	check_token_ids(who, "token", b->tokens, n, cfg->vocab_size, false, "");
	check_token_ids(who, "target", b->targets, n, cfg->vocab_size, true, " (or -100 to ignore)");
	for (int i = 0; i < n; i++)
		counted += b->targets[i] != -100;
	if (counted == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: every target is the ignore index -100", who)));
}
