/*
 * stream.c -- generation as a set-returning function, one row per token,
 * each row computed only when the executor asks for it.
 *
 * PostgreSQL materialises a set-returning function called in FROM before
 * the first row leaves, so a client that wants rows *while* the model runs
 * calls the function in the select list (a value-per-call SRF, evaluated by
 * ProjectSet one row at a time) and reads it through a cursor:
 *
 *   BEGIN;
 *   DECLARE gen NO SCROLL CURSOR FOR
 *       SELECT (r).* FROM (SELECT llm_generate_stream_tokens(...) AS r) AS s;
 *   FETCH 1 FROM gen;          -- one row (one token) per FETCH, until
 *   ...                        -- is_complete, or FETCH returns no row
 *   COMMIT;
 *
 * Each FETCH runs the model for one more token and sends that row at once
 * (the first FETCH: the prompt's forward pass and the first token).
 * The subquery keeps the call single: `SELECT (f(...)).*` would call f once
 * per output column.  The generator lives in the SRF's multi-call memory
 * and goes away with the cursor.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"

#include "generate/generate.h"
#include "generate/prompt.h"
#include "generate/text_generation.h"
#include "tensor/tensor.h"

/*
 * llm_generate_stream_tokens(model, prompt int[], max_tokens, temperature,
 *                            top_k, top_p, seed, stop_ids,
 *                            repetition_penalty)
 *     -> SETOF (step int, token_id int, is_complete boolean)
 *
 * step counts from 1; is_complete is true on the last row (max_tokens
 * reached or a stop id generated).  NULL model, prompt or max_tokens: no
 * rows.
 */
PG_FUNCTION_INFO_V1(llm_generate_stream_tokens_sql);
Datum
llm_generate_stream_tokens_sql(PG_FUNCTION_ARGS)
{
	const char *who = "llm_generate_stream_tokens";
	FuncCallContext *funcctx;
	Generator  *g;
	int32		token;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext old;
		TupleDesc	desc;
		int			n_prompt,
					n_stop = 0;
		int32	   *prompt;
		int32	   *stop_ids = NULL;
		SamplingParams params;

		funcctx = SRF_FIRSTCALL_INIT();
		if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
			SRF_RETURN_DONE(funcctx);
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "%s: return type must be a row type", who);
		funcctx->tuple_desc = BlessTupleDesc(desc);

		prompt = int_array_values(who, "prompt", PG_GETARG_ARRAYTYPE_P(1), 1, &n_prompt);
		if (!PG_ARGISNULL(7))
			stop_ids = int_array_values(who, "stop_ids", PG_GETARG_ARRAYTYPE_P(7), 1, &n_stop);
		params = sampling_params_from_args(fcinfo, 3, 8);
		funcctx->user_fctx = generator_new(who, gpt2_model_get(text_to_cstring(PG_GETARG_TEXT_PP(0))),
										   prompt, n_prompt, PG_GETARG_INT32(2), &params,
										   sampling_seed_from_arg(fcinfo, 6),
										   stop_ids, n_stop);
		MemoryContextSwitchTo(old);
	}

	funcctx = SRF_PERCALL_SETUP();
	g = funcctx->user_fctx;
	if (generator_finished(g))
	{
		generator_free(g);
		SRF_RETURN_DONE(funcctx);
	}
	generator_next(g, &token);
	values[0] = Int32GetDatum(g->n_new);
	values[1] = Int32GetDatum(token);
	values[2] = BoolGetDatum(generator_finished(g));
	SRF_RETURN_NEXT(funcctx, HeapTupleGetDatum(heap_form_tuple(funcctx->tuple_desc, values, nulls)));
}

/*
 * llm_generate_stream(prompt, max_tokens, temperature, top_k, top_p, model,
 *                     seed, stop, stop_ids, repetition_penalty)
 *     -> SETOF (step int, token_id int, token text, text text,
 *               is_complete boolean)
 *
 * llm_generate one row per token: `token` is the text this step adds
 * (complete characters only, so '' while a character spans tokens, or while
 * the text may be the start of a stop string), `text` all of it so far;
 * is_complete is true on the last row.  A stop id ends the stream with its
 * own row (its text is not added).  NULL prompt or max_tokens: no rows.
 */
PG_FUNCTION_INFO_V1(llm_generate_stream_sql);
Datum
llm_generate_stream_sql(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;
	TextGen    *t;
	int32		token;
	int			from,
				to;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext old;
		TupleDesc	desc;

		funcctx = SRF_FIRSTCALL_INIT();
		if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
			SRF_RETURN_DONE(funcctx);
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "llm_generate_stream: return type must be a row type");
		funcctx->tuple_desc = BlessTupleDesc(desc);
		funcctx->user_fctx = textgen_from_args(fcinfo, "llm_generate_stream");
		MemoryContextSwitchTo(old);
	}

	funcctx = SRF_PERCALL_SETUP();
	t = funcctx->user_fctx;
	if (textgen_finished(t))
	{
		textgen_free(t);
		SRF_RETURN_DONE(funcctx);
	}
	textgen_resume(t);
	{
		/* the decoded text grows in the multi-call context */
		MemoryContext old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);

		textgen_next(t, &token, &from, &to);
		MemoryContextSwitchTo(old);
	}
	values[0] = Int32GetDatum(t->gen->n_new);
	values[1] = Int32GetDatum(token);
	values[2] = PointerGetDatum(utf8_to_text(t->text.data + from, to - from));
	values[3] = PointerGetDatum(utf8_to_text(t->text.data, to));
	values[4] = BoolGetDatum(textgen_finished(t));
	SRF_RETURN_NEXT(funcctx, HeapTupleGetDatum(heap_form_tuple(funcctx->tuple_desc, values, nulls)));
}
