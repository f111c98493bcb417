/*
 * text_generation.c -- text in, text out: the prompt is encoded with the
 * model's tokenizer (a tokenizer of the same name), generated tokens are
 * decoded as they come (llm_bpe_stream_*: only complete characters), and
 * generation ends at max_tokens, at a stop id (by default <|endoftext|>)
 * or when the text contains a stop string.  Neither a stop id's text nor a
 * stop string, nor anything after it, is part of the result; text that
 * could still become a stop string is held back until it cannot.
 *
 * Also the SQL function llm_generate().
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "pg_llm.h"
#include "generate/prompt.h"
#include "generate/text_generation.h"

/* The stop strings of a text[] argument, as UTF-8; none for NULL. */
static void
stops_from_arg(TextGen *t, FunctionCallInfo fcinfo, int argno)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	t->n_stops = 0;
	t->longest_stop = 0;
	if (PG_ARGISNULL(argno))
		return;
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(argno), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	t->stops = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		int			len;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s: stop string %d is NULL", t->who, i + 1)));
		t->stops[i] = text_to_utf8(DatumGetTextPP(elems[i]), &len);
		if (len == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: stop string %d is empty", t->who, i + 1)));
		t->longest_stop = Max(t->longest_stop, len);
		t->n_stops++;
	}
}

TextGen *
textgen_from_args(FunctionCallInfo fcinfo, const char *who)
{
	TextGen    *t = palloc0(sizeof(TextGen));
	const char *model = llm_model_or_default(who, PG_ARGISNULL(5) ? NULL :
											 text_to_cstring(PG_GETARG_TEXT_PP(5)));
	const Gpt2Model *m = gpt2_model_get(model);
	int			max_tokens = PG_GETARG_INT32(1);
	SamplingParams params = sampling_params_from_args(fcinfo, 2, 9);
	int			n_prompt,
				n_stop;
	int32	   *prompt;
	int32	   *stop_ids;

	t->who = who;
	t->tok = llm_tokenizer_get(model);
	t->tok_name = pstrdup(model);
	t->tok_version = llm_tokenizer_version(t->tok);
	sampling_check_params(who, &params);
	prompt = prompt_ids(who, t->tok, m, PG_GETARG_TEXT_PP(0), max_tokens, &n_prompt);
	stop_ids = stop_ids_or_eot(fcinfo, 8, who, t->tok, m, &n_stop);
	stops_from_arg(t, fcinfo, 7);

	t->gen = generator_new(who, m, prompt, n_prompt, max_tokens, &params,
						   sampling_seed_from_arg(fcinfo, 6), stop_ids, n_stop);
	llm_bpe_stream_init(&t->detok, t->tok);
	initStringInfo(&t->text);
	t->end = -1;
	return t;
}

bool
textgen_finished(const TextGen *t)
{
	return t->end >= 0 || generator_finished(t->gen);
}

/* Where the first stop string in the text starts (-1: none); new text from `from`. */
static int
find_stop(const TextGen *t, int from)
{
	int			start = Max(0, from - t->longest_stop + 1);
	int			first = -1;

	for (int i = 0; i < t->n_stops; i++)
	{
		const char *hit = strstr(t->text.data + start, t->stops[i]);

		if (hit != NULL && (first < 0 || hit - t->text.data < first))
			first = hit - t->text.data;
	}
	return first;
}

/* The longest end of the text that is the start of a stop string. */
static int
held_back(const TextGen *t)
{
	int			held = 0;

	for (int i = 0; i < t->n_stops; i++)
	{
		int			len = strlen(t->stops[i]);

		for (int k = Min(len - 1, t->text.len); k > held; k--)
			if (memcmp(t->text.data + t->text.len - k, t->stops[i], k) == 0)
			{
				held = k;
				break;
			}
	}
	return held;
}

bool
textgen_next(TextGen *t, int32 *token, int *from, int *to)
{
	int			before = t->text.len;
	int			releasable;

	if (textgen_finished(t) || !generator_next(t->gen, token))
		return false;
	if (!t->gen->stopped)
	{
		check_decodable(t->who, t->tok, t->gen->model, *token);
		llm_bpe_stream_push(&t->detok, *token, &t->text);
	}
	if (generator_finished(t->gen))
		llm_bpe_stream_finish(&t->detok, &t->text);	/* a cut-off character: U+FFFD */
	if (t->n_stops > 0)
		t->end = find_stop(t, before);

	if (t->end >= 0)
		releasable = t->end;
	else if (textgen_finished(t))
		releasable = t->text.len;
	else
		releasable = t->text.len - held_back(t);
	*from = t->released;
	t->released = Max(t->released, releasable);
	*to = t->released;
	return true;
}

void
textgen_resume(TextGen *t)
{
	t->tok = llm_tokenizer_get(t->tok_name);
	if (llm_tokenizer_version(t->tok) != t->tok_version)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s: tokenizer \"%s\" changed during generation", t->who, t->tok_name)));
	t->detok.tok = t->tok;
}

void
textgen_free(TextGen *t)
{
	generator_free(t->gen);
}

/* ---- SQL ---------------------------------------------------------------------- */

/*
 * llm_generate(prompt, max_tokens, temperature, top_k, top_p, model, seed,
 *              stop, stop_ids, repetition_penalty) -> text
 *
 * The text the model writes after the prompt.  NULL prompt or max_tokens
 * gives NULL.
 */
PG_FUNCTION_INFO_V1(llm_generate_sql);
Datum
llm_generate_sql(PG_FUNCTION_ARGS)
{
	TextGen    *t;
	int32		token;
	int			from,
				to;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	t = textgen_from_args(fcinfo, "llm_generate");
	while (textgen_next(t, &token, &from, &to))
		;
	textgen_free(t);
	PG_RETURN_TEXT_P(utf8_to_text(t->text.data, t->released));
}
