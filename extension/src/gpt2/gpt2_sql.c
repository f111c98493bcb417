/*
 * gpt2_sql.c -- GPT-2's SQL functions: llm_param_shapes, llm_logits and
 * llm_loss, thin wrappers over model.c and forward.c.  While
 * pg_llm.autograd_mode records, llm_logits and llm_loss keep their
 * forward's activations and put it on the tape afterwards
 * (gpt2/tape.h).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"

#include "gpt2/tape.h"
#include "autograd/tape.h"
#include "gpt2/forward.h"
#include "kernels/kernels.h"
#include "tensor/tensor.h"

/*
 * llm_param_shapes(model) RETURNS TABLE (name text, shape int[]): the
 * tensors `model` has (gpt2_param_layout), none for an unknown model.  The
 * llm_param trigger checks every written row against it.
 */
PG_FUNCTION_INFO_V1(llm_param_shapes_sql);
Datum
llm_param_shapes_sql(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid;
	int64		version;
	Gpt2Config	cfg;
	bool		found;
	Gpt2ParamInfo *params;
	int			n_params;
	int64		n_floats;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	found = gpt2_config_read(model, &relid, &version, &cfg);
	SPI_finish();
	if (!found)
		return (Datum) 0;
	params = gpt2_param_layout(model, &cfg, &n_params, &n_floats);
	for (int i = 0; i < n_params; i++)
	{
		Datum		dims[2] = {Int32GetDatum(params[i].dims[0]), Int32GetDatum(params[i].dims[1])};
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = CStringGetTextDatum(params[i].name);
		values[1] = PointerGetDatum(construct_array(dims, params[i].ndim, INT4OID,
													sizeof(int32), true, TYPALIGN_INT));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* Error unless 1 <= n <= n_positions and every id is in the vocabulary. */
static void
check_sequence(const char *who, const Gpt2Model *m, const int32 *ids, int n)
{
	if (n < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: the token array is empty", who)));
	if (n > m->cfg.n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: %d tokens are more than model \"%s\" takes (n_positions = %d)",
						who, n, m->name, m->cfg.n_positions)));
	gpt2_check_tokens(who, m, ids, n);
}

/*
 * llm_logits(model, tokens, last_only) -> tensor [T, V], or [1, V] with
 * last_only: the next-token logits after each prefix of `tokens`.
 */
PG_FUNCTION_INFO_V1(llm_logits_sql);
Datum
llm_logits_sql(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			T;
	int32	   *ids = int_array_values("llm_logits", "tokens", PG_GETARG_ARRAYTYPE_P(1), 1, &T);
	bool		last_only = PG_GETARG_BOOL(2);
	const Gpt2Model *m = gpt2_model_get(name);
	int64		rows = last_only ? 1 : T;
	int64		dims[2];
	Tensor	   *out;

	check_sequence("llm_logits", m, ids, T);
	dims[0] = rows;
	dims[1] = m->cfg.vocab_size;
	out = tensor_new(2, dims);
	if (autograd_recording())
	{
		Gpt2Activations *store = gpt2_activations_store(m, T);

		gpt2_transformer(m, store, ids, 1, T, 0, NULL);
		gpt2_lm_head(m, store->lnf + (T - rows) * m->cfg.n_embd, rows, out->data);
		gpt2_tape_logits(m, store, ids, T, last_only, out->data);
	}
	else
	{
		Gpt2State  *st = gpt2_state_new(m, T, T);

		gpt2_forward(st, ids, T);
		gpt2_logits(st, T - rows, rows, out->data);
		gpt2_state_free(st);
	}
	PG_RETURN_TENSOR_P(out);
}

/*
 * The mean cross-entropy of the logits of a forward's T rows against
 * targets (-100 ignored; at least one counted).  The lm_head runs over
 * chunks of rows, so that a [T, V] matrix never exists at once.
 */
static double
chunked_loss(Gpt2State *st, const int32 *targets, int64 T)
{
	int64		V = st->model->cfg.vocab_size;
	int64		chunk = Max(1, Min(T, (32 << 20) / (V * (int64) sizeof(float))));
	float	   *logits = llm_alloc_floats(chunk, V, "logits");
	int64		total_counted = 0;
	double		total_loss = 0;

	for (int64 r0 = 0; r0 < T; r0 += chunk)
	{
		int64		nrows = Min(chunk, T - r0);
		double		loss;
		int64		counted = 0;

		for (int64 i = r0; i < r0 + nrows; i++)
			counted += targets[i] != -100;
		if (counted == 0)
			continue;
		gpt2_logits(st, r0, nrows, logits);
		llm_check_status(llm_cross_entropy(logits, targets + r0, nrows, V, &loss, &counted, NULL));
		total_loss += loss * counted;	/* the chunk's mean, back to a sum */
		total_counted += counted;
	}
	pfree(logits);
	return total_loss / total_counted;
}

/*
 * llm_loss(model, tokens, targets) -> mean cross-entropy of the logits at
 * row t against targets[t], over the t whose target is not -100.  The
 * targets are given explicitly, aligned with the tokens: for next-token
 * prediction pass targets = tokens[2:] || -100 (HF's labels=input_ids
 * shifts internally to the same thing).
 */
PG_FUNCTION_INFO_V1(llm_loss_sql);
Datum
llm_loss_sql(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			T,
				n_targets;
	int32	   *ids = int_array_values("llm_loss", "tokens", PG_GETARG_ARRAYTYPE_P(1), 1, &T);
	int32	   *targets = int_array_values("llm_loss", "targets", PG_GETARG_ARRAYTYPE_P(2), 1, &n_targets);
	const Gpt2Model *m = gpt2_model_get(name);
	int64		counted = 0;
	double		loss;

	check_sequence("llm_loss", m, ids, T);
	if (n_targets != T)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_loss: %d targets for %d tokens (one target per token)", n_targets, T)));
	check_token_ids("llm_loss", "target", targets, T, m->cfg.vocab_size, true, " (or -100 to ignore)");
	for (int i = 0; i < T; i++)
		counted += targets[i] != -100;
	if (counted == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_loss: every target is the ignore index -100")));

	if (autograd_recording())
	{
		Gpt2Batch  *b = gpt2_batch_new(m, 1, T);

		loss = gpt2_batch_forward(b, ids, targets, NULL);
		gpt2_tape_loss(b);
		gpt2_batch_free(b);
	}
	else
	{
		Gpt2State  *st = gpt2_state_new(m, T, T);

		gpt2_forward(st, ids, T);
		loss = chunked_loss(st, targets, T);
		gpt2_state_free(st);
	}
	PG_RETURN_FLOAT4((float4) loss);
}
