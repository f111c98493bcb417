/*
 * generate.c -- generation as a loop over GPT-2 (gpt2/forward.h): run the
 * prompt through the network once (prefill), then repeatedly pick a token
 * from the last row's logits (sampling.c) and run just that token (decode,
 * attending over the KV cache).  The last token picked is never run: it
 * needs no logits.  A token is computed only when asked for, so a stream's
 * first row leaves after the prefill alone.
 *
 * Also the SQL function llm_generate_tokens().
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "gpt2/forward.h"
#include "tensor/tensor.h"
#include "generate/batch.h"
#include "generate/generate.h"

void
check_stop_ids(const char *who, const Gpt2Model *m, const int32 *ids, int n)
{
	check_token_ids(who, "stop id", ids, n, m->cfg.vocab_size, false,
					psprintf(" of model \"%s\"", m->name));
}

void
generator_check_args(const char *who, const Gpt2Model *m, const int32 *prompt, int n_prompt,
					 int max_new, const int32 *stop_ids, int n_stop)
{
	if (n_prompt == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: the prompt is empty; GPT-2 needs at least one token to start from", who)));
	if ((int64) n_prompt + max_new > m->cfg.n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: a prompt of %d tokens plus %d new tokens is longer than model \"%s\" takes (n_positions = %d)",
						who, n_prompt, max_new, m->name, m->cfg.n_positions)));
	gpt2_check_tokens(who, m, prompt, n_prompt);
	check_stop_ids(who, m, stop_ids, n_stop);
}

Generator *
generator_new(const char *who, const Gpt2Model *m, const int32 *prompt, int n_prompt,
			  int max_new, const SamplingParams *params, uint64 seed,
			  const int32 *stop_ids, int n_stop)
{
	Generator  *g = palloc0(sizeof(Generator));

	sampling_check_params(who, params);
	if (max_new < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: max_tokens must be >= 1, got %d", who, max_new)));
	generator_check_args(who, m, prompt, n_prompt, max_new, stop_ids, n_stop);

	g->who = who;
	g->model = m;
	g->prompt = palloc(sizeof(int32) * n_prompt);
	memcpy(g->prompt, prompt, sizeof(int32) * n_prompt);
	g->n_prompt = n_prompt;
	g->stop_ids = palloc(sizeof(int32) * Max(n_stop, 1));
	if (n_stop > 0)				/* stop_ids may be NULL then: memcpy must not see it */
		memcpy(g->stop_ids, stop_ids, sizeof(int32) * n_stop);
	g->n_stop = n_stop;
	g->max_new = max_new;
	g->sampler = sampler_new(params, m->cfg.vocab_size, seed);
	sampler_saw(g->sampler, prompt, n_prompt);
	g->logits = llm_alloc_floats(1, m->cfg.vocab_size, "logits");
	/* the last generated token is never fed back: it needs no position */
	g->state = gpt2_state_new(m, n_prompt, n_prompt + max_new - 1);
	batch_share_cache(g->state);
	return g;
}

bool
generator_finished(const Generator *g)
{
	return g->stopped || g->n_new >= g->max_new;
}

bool
generator_next(Generator *g, int32 *token)
{
	if (generator_finished(g))
		return false;
	CHECK_FOR_INTERRUPTS();
	if (g->n_new == 0)
	{
		/* Prefill: the whole prompt at once; only its last row's logits matter. */
		gpt2_forward(g->state, g->prompt, g->n_prompt);
		gpt2_logits(g->state, g->n_prompt - 1, 1, g->logits);
	}
	else
	{
		/*
		 * Decode: one token, attending over everything in the KV cache; its
		 * products by the weights batched with other sessions' (batch.c).
		 */
		batch_decode_step(g->state, &g->last, g->logits);
	}
	g->last = sampler_next(g->sampler, g->who, g->logits);
	g->n_new++;
	for (int i = 0; i < g->n_stop; i++)
		g->stopped |= g->last == g->stop_ids[i];
	*token = g->last;
	return true;
}

void
generator_free(Generator *g)
{
	batch_end();
	gpt2_state_free(g->state);
}

/* ---- SQL -------------------------------------------------------------------- */

/* The stop ids of an optional int[] argument (NULL: none). */
static int32 *
stop_ids_from_arg(FunctionCallInfo fcinfo, const char *who, int argno, int *n)
{
	*n = 0;
	if (PG_ARGISNULL(argno))
		return palloc(sizeof(int32));
	return int_array_values(who, "stop_ids", PG_GETARG_ARRAYTYPE_P(argno), 1, n);
}

static ArrayType *
int_array(const int32 *values, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = Int32GetDatum(values[i]);
	return construct_array(elems, n, INT4OID, sizeof(int32), true, TYPALIGN_INT);
}

/*
 * llm_generate_tokens(model, prompt, max_new_tokens, temperature, top_k,
 *                     top_p, seed, stop_token, stop_ids, repetition_penalty)
 *     -> int[]
 *
 * Returns only the new tokens (HF's generate returns prompt + new), the
 * stop token included when one ended the generation.  NULL model, prompt
 * or max_new_tokens gives NULL; max_new_tokens = 0 gives '{}'.
 */
PG_FUNCTION_INFO_V1(llm_generate_tokens_sql);
Datum
llm_generate_tokens_sql(PG_FUNCTION_ARGS)
{
	const char *who = "llm_generate_tokens";
	char	   *model;
	const Gpt2Model *m;
	int			n_prompt,
				n_stop;
	int32	   *prompt;
	int32	   *stop_ids;
	int32		max_new;
	SamplingParams params;
	uint64		seed;
	Generator  *g;
	int32	   *out;
	int			n_out = 0;
	int32		token;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	prompt = int_array_values(who, "prompt", PG_GETARG_ARRAYTYPE_P(1), 1, &n_prompt);
	max_new = PG_GETARG_INT32(2);
	params = sampling_params_from_args(fcinfo, 3, 9);
	seed = sampling_seed_from_arg(fcinfo, 6);
	stop_ids = stop_ids_from_arg(fcinfo, who, 8, &n_stop);

	sampling_check_params(who, &params);
	if (max_new < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: max_new_tokens must be >= 0, got %d", who, max_new)));
	m = gpt2_model_get(model);
	if (!PG_ARGISNULL(7))
	{
		int32		stop_token = PG_GETARG_INT32(7);

		check_token_ids(who, "stop_token", &stop_token, 1, m->cfg.vocab_size, false, "");
		stop_ids = repalloc(stop_ids, sizeof(int32) * (n_stop + 1));
		stop_ids[n_stop++] = stop_token;
	}
	if (max_new == 0)
	{
		/* nothing to generate, but the arguments are checked all the same */
		generator_check_args(who, m, prompt, n_prompt, 0, stop_ids, n_stop);
		PG_RETURN_ARRAYTYPE_P(int_array(NULL, 0));
	}

	g = generator_new(who, m, prompt, n_prompt, max_new, &params, seed, stop_ids, n_stop);
	out = palloc(sizeof(int32) * max_new);
	while (generator_next(g, &token))
		out[n_out++] = token;
	generator_free(g);
	PG_RETURN_ARRAYTYPE_P(int_array(out, n_out));
}
