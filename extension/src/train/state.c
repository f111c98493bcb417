/*
 * state.c -- a model's training state in backend memory: read from
 * llm_param once, written back in one statement (see state.h).
 *
 * Why a write-back is one UPDATE whose new values come from a function:
 * the values are in this backend's memory, and the statement must set
 * data, m and v of every row at once.  Passing them as array parameters
 * would build arrays as big as the model (and hit the 1 GB varlena limit
 * for big ones); a set-returning function in FROM would be materialised
 * whole.  So the UPDATE names llm_train_state_tensor(model, name, part),
 * which copies one tensor out of the state being written back, and the
 * executor frees each row's values before the next row.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "support/support.h"
#include "tensor/tensor.h"
#include "train/state.h"

/* ---- loading ------------------------------------------------------------------ */

int
llm_train_state_find(const LlmTrainState *st, const char *name)
{
	for (int i = 0; i < st->n_params; i++)
		if (strcmp(st->params[i].name, name) == 0)
			return i;
	return -1;
}

/* Four zeroed arenas and the views into them, in st->mcxt. */
static void
allocate_arenas(LlmTrainState *st)
{
	float	  **arenas[4] = {&st->data, &st->grad, &st->m, &st->v};
	static const char *const what[4] = {"weights", "gradients", "first moments", "second moments"};
	Size		bytes = st->n_floats * sizeof(float);

	for (int i = 0; i < 4; i++)
	{
		char	   *raw = llm_alloc_huge(bytes + 64,
										 psprintf("the %s of model \"%s\"", what[i], st->model));

		*arenas[i] = (float *) TYPEALIGN(64, raw);
		memset(*arenas[i], 0, bytes);
	}
	st->weights.name = st->model;
	st->weights.config_relid = st->config_relid;
	st->weights.version = -1;	/* never the cache's */
	st->weights.cfg = st->cfg;
	st->grads = st->weights;
	gpt2_model_bind(&st->weights, st->data);
	gpt2_model_bind(&st->grads, st->grad);
}

void
llm_train_state_set_dtype(LlmTrainState *st, const char *who, const char *dtype)
{
	if (strcmp(dtype, "fp32") == 0)
		return;
	if (strcmp(dtype, "bf16") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: dtype must be 'fp32' or 'bf16', not \"%s\"", who, dtype)));
	if (st->data_bf16 == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(st->mcxt);
		char	   *raw = llm_alloc_huge(st->n_floats * sizeof(float) + 64,
										 psprintf("the bf16 weights of model \"%s\"", st->model));

		st->data_bf16 = (float *) TYPEALIGN(64, raw);
		st->weights_bf16 = st->weights;
		gpt2_model_bind(&st->weights_bf16, st->data_bf16);
		MemoryContextSwitchTo(old);
	}
}

const char *
llm_train_state_dtype(const LlmTrainState *st)
{
	return st->data_bf16 != NULL ? "bf16" : "fp32";
}

/* Read the rows of llm_param into the arenas (SPI connected, read-only). */
static void
read_rows(LlmTrainState *st, int flags)
{
	bool		want_grad = (flags & LLM_STATE_LOAD_GRAD) != 0;
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(st->model);
	bool	   *seen = palloc0(sizeof(bool) * st->n_params);
	int64		first_step = -1;
	int			ret;

	/* The rows hold TOAST pointers: each tensor is read when copied, in slices. */
	ret = SPI_execute_with_args(psprintf("SELECT name, step, data, m, v%s FROM %s WHERE model = $1",
										 want_grad ? ", grad" : "", llm_table_name("llm_param")),
								1, &argtype, &arg, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_param failed: %s", SPI_result_code_string(ret));

	for (uint64 row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tup = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		int			i = llm_train_state_find(st, name);
		bool		isnull;
		int64		step = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		float	   *arenas[4] = {st->data, st->m, st->v, st->grad};
		static const char *const columns[4] = {"data", "m", "v", "grad"};

		CHECK_FOR_INTERRUPTS();
		if (i < 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("model \"%s\" has an unexpected parameter \"%s\"", st->model, name),
					 errhint("SELECT * FROM llm_param_shapes(model) lists the names GPT-2 has.")));
		if (first_step >= 0 && step != first_step)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("the llm_param rows of model \"%s\" disagree on the step: "
							"\"%s\" has %lld, another row %lld",
							st->model, name, (long long) step, (long long) first_step),
					 errhint("Every parameter takes the same optimizer steps: restore a checkpoint, "
							 "or UPDATE llm_param SET step = ... WHERE model = '%s'.", st->model)));
		first_step = step;
		seen[i] = true;

		for (int c = 0; c < (want_grad ? 4 : 3); c++)
		{
			Datum		raw = SPI_getbinval(tup, desc, 3 + c, &isnull);
			float	   *dst = arenas[c] + st->params[i].offset;

			if (!isnull)
				gpt2_param_read(st->model, &st->params[i], columns[c], raw, dst);
			else if (c == 3)
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("parameter \"%s\" of model \"%s\" has no gradient (llm_param.grad is NULL)",
								name, st->model)));
			/* a NULL m or v is zeros: the arenas start zeroed */
		}
		pfree(name);
	}

	for (int i = 0; i < st->n_params; i++)
		if (!seen[i])
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("model \"%s\" is missing parameter \"%s\"", st->model, st->params[i].name),
					 errhint("Import weights, or run SELECT llm_init('%s', seed) for a fresh model.",
							 st->model)));
	st->step = first_step;
	pfree(seen);
}

LlmTrainState *
llm_train_state_load(const char *model, int flags, MemoryContext parent)
{
	MemoryContext mcxt = AllocSetContextCreate(parent, "pg_llm training state",
											   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	LlmTrainState *st = palloc0(sizeof(LlmTrainState));

	st->mcxt = mcxt;
	st->model = pstrdup(model);

	SPI_connect();
	if (!gpt2_config_read(model, &st->config_relid, &st->version, &st->cfg))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown model \"%s\"", model),
				 errhint("Models are registered in llm_model_config.")));
	if (!(flags & LLM_STATE_READ_ONLY))
		llm_require_model_owner(model);
	gpt2_config_check(model, &st->cfg);

	/* SPI_connect switched to SPI's context: the state's allocations go to mcxt. */
	MemoryContextSwitchTo(mcxt);
	st->params = gpt2_param_layout(model, &st->cfg, &st->n_params, &st->n_floats);
	st->ranges = palloc(sizeof(LlmParamRange) * st->n_params);
	for (int i = 0; i < st->n_params; i++)
	{
		st->ranges[i].offset = st->params[i].offset;
		st->ranges[i].numel = st->params[i].numel;
		st->ranges[i].decay = st->params[i].ndim >= 2;
	}
	st->grad_norms = palloc0(sizeof(float) * st->n_params);
	st->update_sq = palloc0(sizeof(double) * st->n_params);
	allocate_arenas(st);

	/* Detoasted copies are made in SPI's context and freed one by one. */
	read_rows(st, flags);
	llm_train_state_read_history(st);
	SPI_finish();
	st->consistent = true;

	MemoryContextSwitchTo(old);
	return st;
}

void
llm_train_state_free(LlmTrainState *st)
{
	if (st != NULL)
		MemoryContextDelete(st->mcxt);
}

/* ---- writing back ---------------------------------------------------------------- */

/* The state whose tensors llm_train_state_tensor() hands out: set only during a write-back. */
static LlmTrainState *writing_back = NULL;

/* ERROR 40001 unless llm_model_config still has the version the state holds; locks its row. */
static void
lock_unchanged_version(LlmTrainState *st)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(st->model);
	bool		isnull;
	int64		version;
	int			ret;

	ret = SPI_execute_with_args(psprintf("SELECT version FROM %s WHERE model = $1 FOR NO KEY UPDATE",
										 llm_table_name("llm_model_config")),
								1, &argtype, &arg, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: locking llm_model_config failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" was deleted while it trained; nothing was written", st->model)));
	version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (version != st->version)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("the parameters of model \"%s\" changed while it trained; nothing was written",
						st->model),
				 errdetail("llm_model_config.version was " INT64_FORMAT " when the training state "
						   "was read, and is " INT64_FORMAT " now.", st->version, version),
				 errhint("Another session or statement wrote to llm_param; train again from there.")));
}

static void
run_update(LlmTrainState *st, bool with_grad)
{
	/* the function is the extension's too: llm_table_name() qualifies any name */
	char	   *tensor = llm_table_name("llm_train_state_tensor");
	Oid			argtypes[2] = {TEXTOID, INT4OID};
	Datum		args[2] = {CStringGetTextDatum(st->model), Int32GetDatum((int32) st->step)};
	char	   *grad = with_grad ? psprintf("%s($1, p.name, 'grad')", tensor) : "NULL";
	char	   *sql = psprintf("UPDATE %s AS p SET "
							   "data = %s($1, p.name, 'data'), "
							   "grad = %s, "
							   "m = %s($1, p.name, 'm'), "
							   "v = %s($1, p.name, 'v'), "
							   "step = $2 "
							   "WHERE p.model = $1",
							   llm_table_name("llm_param"), tensor, grad, tensor, tensor);
	int			ret;

	if (st->step > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("model \"%s\": step " INT64_FORMAT " does not fit llm_param.step",
						st->model, st->step)));

	PG_TRY();
	{
		writing_back = st;
		ret = SPI_execute_with_args(sql, 2, argtypes, args, NULL, false, 0);
	}
	PG_FINALLY();
	{
		writing_back = NULL;
	}
	PG_END_TRY();

	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "pg_llm: writing back llm_param failed: %s", SPI_result_code_string(ret));
	if (SPI_processed != (uint64) st->n_params)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("model \"%s\": the write-back updated " UINT64_FORMAT " rows of llm_param, "
						"expected %d; nothing was written", st->model, SPI_processed, st->n_params)));
}

/* The version the write-back's statement trigger gave the model. */
static int64
read_version(LlmTrainState *st)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(st->model);
	bool		isnull;

	if (SPI_execute_with_args(psprintf("SELECT version FROM %s WHERE model = $1",
									   llm_table_name("llm_model_config")),
							  1, &argtype, &arg, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "pg_llm: reading the version of model \"%s\" failed", st->model);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

void
llm_train_state_write_back(LlmTrainState *st, bool with_grad)
{
	if (!st->consistent)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the training state of model \"%s\" was interrupted during an update; "
						"nothing was written", st->model)));
	SPI_connect();
	lock_unchanged_version(st);
	run_update(st, with_grad);
	st->version = read_version(st);
	llm_train_state_record_write_back(st);
	llm_commit_durably();		/* what a learner is told is saved is saved */
	SPI_finish();
}

/*
 * llm_train_state_tensor(model text, name text, part text) RETURNS tensor:
 * one tensor of the state being written back.  Called by the write-back's
 * UPDATE only; ERROR at any other time.
 */
PG_FUNCTION_INFO_V1(llm_train_state_tensor);
Datum
llm_train_state_tensor(PG_FUNCTION_ARGS)
{
	LlmTrainState *st = writing_back;
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *part = text_to_cstring(PG_GETARG_TEXT_PP(2));
	const float *arena;
	const Gpt2ParamInfo *p;
	Tensor	   *t;
	int			i;

	if (st == NULL || strcmp(st->model, model) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_train_state_tensor: no training state of model \"%s\" is being written back",
						model),
				 errhint("It is called by the write-back of a training step, not by hand.")));
	if (strcmp(part, "data") == 0)
		arena = st->data;
	else if (strcmp(part, "grad") == 0)
		arena = st->grad;
	else if (strcmp(part, "m") == 0)
		arena = st->m;
	else if (strcmp(part, "v") == 0)
		arena = st->v;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_train_state_tensor: part must be data, grad, m or v, not \"%s\"", part)));
	i = llm_train_state_find(st, name);
	if (i < 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_train_state_tensor: model \"%s\" has no parameter \"%s\"", model, name)));

	/* not tensor_new(): that zeroes all of it first */
	p = &st->params[i];
	t = palloc(TENSOR_HDRSZ + p->numel * sizeof(float));
	memset(t, 0, TENSOR_HDRSZ);
	SET_VARSIZE(t, TENSOR_HDRSZ + p->numel * sizeof(float));
	t->ndim = p->ndim;
	t->dtype = LLM_DTYPE_FLOAT32;
	t->format = LLM_TENSOR_FORMAT;
	for (int d = 0; d < p->ndim; d++)
		t->dims[d] = (int32) p->dims[d];
	memcpy(t->data, arena + p->offset, p->numel * sizeof(float));
	PG_RETURN_TENSOR_P(t);
}
