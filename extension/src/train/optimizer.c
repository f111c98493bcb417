/*
 * optimizer.c -- the optimizer's steps on a training state (state.h), the
 * rows they log, and the SQL functions over them:
 *
 *   llm_adamw_step(model, lr, ...)  one AdamW update of llm_param from the
 *                                   gradients stored in it
 *   llm_lr(step, lr, warmup, decay, min_lr)   the learning-rate schedule
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "support/support.h"
#include "train/state.h"

/* ---- steps ----------------------------------------------------------------------- */

void
llm_train_state_zero_grad(LlmTrainState *st)
{
	memset(st->grad, 0, st->n_floats * sizeof(float));
}

float
llm_train_state_clip(LlmTrainState *st, double max_norm)
{
	float		total;

	llm_check_status(llm_clip_grad_norm(st->grad, st->ranges, st->n_params, max_norm,
										st->grad_norms, &total));
	st->grad_norm = total;
	st->norms_step = st->step + 1;
	return total;
}

void
llm_train_state_adamw(LlmTrainState *st, const LlmAdamW *settings)
{
	LlmAdamW	hp = *settings;

	hp.step = st->step + 1;
	/* an interrupted update leaves some tensors updated and others not */
	st->consistent = false;
	llm_check_status(llm_adamw_update(st->data, st->grad, st->m, st->v, st->ranges,
									  st->n_params, &hp, st->update_sq));
	st->consistent = true;
	st->step = hp.step;
	st->update_step = hp.step;
}

/* ---- what a step logs --------------------------------------------------------------- */

/* ids [B, T] as an int[][] (B = 1: a one-dimensional int[]). */
static ArrayType *
batch_array(const int32 *ids, int B, int T)
{
	Datum	   *d = palloc(sizeof(Datum) * B * T);
	int			dims[2] = {B, T};
	int			lbs[2] = {1, 1};

	for (int i = 0; i < B * T; i++)
		d[i] = Int32GetDatum(ids[i]);
	if (B == 1)
		return construct_md_array(d, NULL, 1, dims + 1, lbs, INT4OID, sizeof(int32), true,
								  TYPALIGN_INT);
	return construct_md_array(d, NULL, 2, dims, lbs, INT4OID, sizeof(int32), true, TYPALIGN_INT);
}

void
llm_train_state_log(LlmTrainState *st, const LlmTrainLogEntry *e)
{
	Oid			types[16] = {TEXTOID, INT4OID, FLOAT4OID, FLOAT8OID, FLOAT4OID, FLOAT8OID,
		INT8ARRAYOID, FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID, INT4ARRAYOID,
	INT4ARRAYOID, TEXTOID, TEXTOID};
	Datum		values[16];
	char		nulls[16];
	int			n_values = 14;
	Datum	   *ids = palloc(sizeof(Datum) * Max(e->batch_size, 1));
	bool		isnull;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(st->model);
	values[1] = Int32GetDatum((int32) st->step);
	values[2] = Float4GetDatum((float4) e->loss);
	if (isnan(e->loss))
		nulls[2] = 'n';
	values[3] = Float8GetDatum(e->lr);
	values[4] = Float4GetDatum(st->grad_norm);
	if (st->norms_step != st->step)
		nulls[4] = 'n';
	values[5] = Float8GetDatum(e->tokens_per_s);
	if (e->tokens_per_s < 0)
		nulls[5] = 'n';
	for (int i = 0; i < e->batch_size; i++)
		ids[i] = Int64GetDatum(e->batch[i]);
	values[6] = PointerGetDatum(construct_array(ids, e->batch_size, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (e->batch == NULL)
		nulls[6] = 'n';
	values[7] = Float8GetDatum(e->hp.weight_decay);
	values[8] = Float8GetDatum(e->hp.beta1);
	values[9] = Float8GetDatum(e->hp.beta2);
	values[10] = Float8GetDatum(e->hp.eps);
	values[11] = Float8GetDatum(e->clip);
	if (e->clip <= 0)
		nulls[11] = 'n';
	nulls[12] = nulls[13] = 'n';
	if (e->tokens != NULL)
	{
		values[12] = PointerGetDatum(batch_array(e->tokens, e->B, e->T));
		values[13] = PointerGetDatum(batch_array(e->targets, e->B, e->T));
		nulls[12] = nulls[13] = ' ';
	}
	/*
	 * (only named runs set run, only bf16 steps dtype -- the column's default
	 * is 'fp32': a database older than 0.3.0 has neither column)
	 */
	if (st->run != NULL)
		values[n_values++] = CStringGetTextDatum(st->run);
	if (st->data_bf16 != NULL)
		values[n_values++] = CStringGetTextDatum(llm_train_state_dtype(st));

	SPI_connect();
	if (SPI_execute_with_args(psprintf("INSERT INTO %s (model, step, loss, lr, grad_norm, "
									   "tokens_per_s, batch, weight_decay, beta1, beta2, eps, clip, "
									   "tokens, targets%s%s) "
									   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14%s%s) "
									   "RETURNING id",
									   llm_table_name("llm_train_log"),
									   st->run != NULL ? ", run" : "",
									   st->data_bf16 != NULL ? ", dtype" : "",
									   st->run != NULL ? ", $15" : "",
									   st->data_bf16 != NULL ? (st->run != NULL ? ", $16" : ", $15") : ""),
							  n_values, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "pg_llm: writing llm_train_log failed");
	llm_train_state_note_log(st, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
															 SPI_tuptable->tupdesc, 1, &isnull)));
	SPI_finish();
}

void
llm_train_state_record_grad_stats(LlmTrainState *st)
{
	Oid			types[6] = {TEXTOID, INT4OID, TEXTARRAYOID, FLOAT4ARRAYOID, FLOAT4ARRAYOID,
	FLOAT4ARRAYOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Datum	   *names = palloc(sizeof(Datum) * st->n_params);
	Datum	   *grad_norms = palloc(sizeof(Datum) * st->n_params);
	Datum	   *data_norms = palloc(sizeof(Datum) * st->n_params);
	Datum	   *ratios = palloc(sizeof(Datum) * st->n_params);
	bool	   *ratio_nulls = palloc0(sizeof(bool) * st->n_params);
	double	   *data_sq = palloc(sizeof(double) * st->n_params);
	int			dims[1] = {st->n_params};
	int			lbs[1] = {1};

	if (st->norms_step != st->step || st->update_step != st->step)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("model \"%s\": gradient statistics need a clip and an update at step "
						INT64_FORMAT, st->model, st->step)));
	llm_check_status(llm_sum_squares(st->data, st->ranges, st->n_params, data_sq));
	for (int i = 0; i < st->n_params; i++)
	{
		double		data_norm = sqrt(data_sq[i]);

		names[i] = CStringGetTextDatum(st->params[i].name);
		grad_norms[i] = Float4GetDatum(st->grad_norms[i]);
		data_norms[i] = Float4GetDatum((float4) data_norm);
		ratios[i] = Float4GetDatum((float4) (sqrt(st->update_sq[i]) / data_norm));
		ratio_nulls[i] = data_norm == 0.0;
	}
	values[0] = CStringGetTextDatum(st->model);
	values[1] = Int32GetDatum((int32) st->step);
	values[2] = PointerGetDatum(construct_array(names, st->n_params, TEXTOID, -1, false,
												TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(grad_norms, st->n_params, FLOAT4OID,
												sizeof(float4), true, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(data_norms, st->n_params, FLOAT4OID,
												sizeof(float4), true, TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_md_array(ratios, ratio_nulls, 1, dims, lbs, FLOAT4OID,
												   sizeof(float4), true, TYPALIGN_INT));

	SPI_connect();
	if (SPI_execute_with_args(psprintf("INSERT INTO %s (model, step, name, grad_norm, "
									   "data_norm, update_ratio) "
									   "SELECT $1, $2, u.* FROM ROWS FROM (pg_catalog.unnest($3), "
									   "pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)) AS u",
									   llm_table_name("llm_grad_stats")),
							  6, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "pg_llm: writing llm_grad_stats failed");
	SPI_finish();
}

/* ---- SQL ------------------------------------------------------------------------------ */

/* ERROR 22023 unless lo <= x (< hi when hi_open, else <= hi), naming the setting. */
static void
check_range(const char *who, const char *what, double x, double lo, double hi, bool hi_open)
{
	if (isnan(x) || x < lo || (hi_open ? x >= hi : x > hi))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: %s must be in [%g, %g%s, not %g", who, what, lo, hi,
						hi_open ? ")" : "]", x)));
}

/* The AdamW settings of a call, checked as torch.optim.AdamW checks them. */
LlmAdamW
llm_adamw_settings(const char *who, double lr, double weight_decay, double beta1, double beta2,
			   double eps)
{
	LlmAdamW	hp = {.lr = lr, .beta1 = beta1, .beta2 = beta2, .eps = eps,
	.weight_decay = weight_decay};

	check_range(who, "lr", lr, 0.0, HUGE_VAL, true);
	check_range(who, "weight_decay", weight_decay, 0.0, HUGE_VAL, true);
	check_range(who, "beta1", beta1, 0.0, 1.0, true);
	check_range(who, "beta2", beta2, 0.0, 1.0, true);
	check_range(who, "eps", eps, 0.0, HUGE_VAL, true);
	return hp;
}

/*
 * llm_adamw_step(model, lr, weight_decay, beta1, beta2, eps, max_grad_norm)
 * RETURNS real: one AdamW update of the model from the gradients in
 * llm_param.grad (clipped first when max_grad_norm is given), written back
 * with the clipped gradients, logged in llm_train_log and llm_grad_stats.
 * Returns the gradient norm before clipping.
 */
PG_FUNCTION_INFO_V1(llm_adamw_step);
Datum
llm_adamw_step(PG_FUNCTION_ARGS)
{
	const char *who = "llm_adamw_step";
	char	   *model;
	LlmAdamW	hp;
	double		max_norm = -1;
	LlmTrainState *st;
	LlmTrainLogEntry entry = {0};
	float		norm;
	instr_time	t[5];

	for (int i = 0; i < 6; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s: only max_grad_norm may be NULL (argument %d is)", who, i + 1)));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	hp = llm_adamw_settings(who, PG_GETARG_FLOAT8(1), PG_GETARG_FLOAT8(2), PG_GETARG_FLOAT8(3),
						PG_GETARG_FLOAT8(4), PG_GETARG_FLOAT8(5));
	if (!PG_ARGISNULL(6))
	{
		max_norm = PG_GETARG_FLOAT8(6);
		if (!(max_norm > 0) || isinf(max_norm))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: max_grad_norm must be positive and finite (or NULL: no clipping), not %g",
							who, max_norm)));
	}

	INSTR_TIME_SET_CURRENT(t[0]);
	st = llm_train_state_load(model, LLM_STATE_LOAD_GRAD, CurrentMemoryContext);
	INSTR_TIME_SET_CURRENT(t[1]);
	norm = llm_train_state_clip(st, max_norm);
	llm_train_state_adamw(st, &hp);
	INSTR_TIME_SET_CURRENT(t[2]);

	entry.loss = NAN;			/* the gradients came from elsewhere */
	entry.lr = hp.lr;
	entry.tokens_per_s = -1;
	entry.hp = hp;
	entry.clip = max_norm;
	llm_train_state_log(st, &entry);
	llm_train_state_record_grad_stats(st);
	INSTR_TIME_SET_CURRENT(t[3]);
	llm_train_state_write_back(st, true);
	INSTR_TIME_SET_CURRENT(t[4]);
	llm_train_state_free(st);

	for (int i = 4; i > 0; i--)
		INSTR_TIME_SUBTRACT(t[i], t[i - 1]);
	ereport(DEBUG1,
			(errmsg("%s: load %.3f s, clip and update %.3f s, logs %.3f s, write-back %.3f s",
					who, INSTR_TIME_GET_DOUBLE(t[1]), INSTR_TIME_GET_DOUBLE(t[2]),
					INSTR_TIME_GET_DOUBLE(t[3]), INSTR_TIME_GET_DOUBLE(t[4]))));
	PG_RETURN_FLOAT4(norm);
}

/*
 * llm_lr(step, lr, warmup_steps, decay_steps, min_lr) RETURNS double
 * precision: the learning rate of update number `step` (0 for the first).
 */
PG_FUNCTION_INFO_V1(llm_lr_sql);
Datum
llm_lr_sql(PG_FUNCTION_ARGS)
{
	const char *who = "llm_lr";
	int64		step = PG_GETARG_INT64(0);
	LlmLrSchedule s = {.lr = PG_GETARG_FLOAT8(1), .warmup_steps = PG_GETARG_INT32(2),
	.decay_steps = PG_GETARG_INT32(3), .min_lr = PG_GETARG_FLOAT8(4)};

	if (step < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: step must be >= 0, not " INT64_FORMAT, who, step)));
	check_range(who, "lr", s.lr, 0.0, HUGE_VAL, true);
	check_range(who, "min_lr", s.min_lr, 0.0, s.lr, false);
	if (s.warmup_steps < 0 || s.decay_steps <= s.warmup_steps)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: need 0 <= warmup_steps < decay_steps, got warmup_steps %lld and decay_steps %lld",
						who, (long long) s.warmup_steps, (long long) s.decay_steps)));
	PG_RETURN_FLOAT8(llm_lr_at(&s, step));
}
