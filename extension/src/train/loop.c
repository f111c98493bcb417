/*
 * loop.c -- CALL llm_train(model, steps, ...): a training run in one
 * procedure call.  The training state (train/state.h) stays in backend
 * memory for the whole call; every step draws a batch from a split of a
 * dataset of llm_dataset, runs forward, backward, clip and AdamW, and
 * COMMITs its rows of llm_train_log and llm_grad_stats, so another session
 * sees the run as it goes.  The weights are written back every save_every
 * steps and at the end: a cancel or a crash leaves llm_param at the last
 * write-back.
 *
 * Batches: update number s of the model (llm_param.step before it) draws
 * batch_size examples, with replacement, from a generator seeded with
 * (seed, s) among the examples of the split (default 'train') of the
 * dataset (default: the one named after the role): the same seed, data and
 * step give the same batch, in any call, after a checkpoint load too.  The
 * learning rate of the run's i-th step (from 0) is
 * llm_lr_at(lr, warmup, decay_steps, min_lr) at i (kernels/optim.h).
 *
 * Runs: without a name the run is this call.  A named run (run => 'name',
 * train/run.h) may take several calls: one that was interrupted continues
 * from the run's last write-back when the same CALL is typed again.
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "kernels/prng.h"
#include "support/support.h"
#include "tensor/tensor.h"
#include "train/batch.h"
#include "train/run.h"
#include "train/state.h"
#include "train/step.h"

/* The procedure's arguments, in llm_train's order (sql/82_train_step.sql). */
enum
{
	A_MODEL, A_STEPS, A_BATCH_SIZE, A_LR, A_WARMUP, A_MIN_LR, A_WEIGHT_DECAY, A_CLIP, A_SEED,
	A_GRAD_WORKERS, A_OPTIMIZER_WORKERS, A_N_LAYER, A_N_HEAD, A_D, A_VOCAB, A_SAVE_EVERY,
	A_BETA1, A_BETA2, A_EPS, A_DECAY_STEPS, A_NOTICE_EVERY, A_SPLIT, A_DATASET, A_RUN, A_DTYPE,
	A_COUNT
};

static const char *const who = "llm_train";

static void
require(bool ok, const char *fmt_setting, double value)
{
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_train: %s, not %g", fmt_setting, value)));
}

static int
int_arg(FunctionCallInfo fcinfo, int i, int dflt)
{
	return PG_ARGISNULL(i) ? dflt : PG_GETARG_INT32(i);
}

static double
float_arg(FunctionCallInfo fcinfo, int i, double dflt)
{
	return PG_ARGISNULL(i) ? dflt : PG_GETARG_FLOAT8(i);
}

/* An explicit dimension must agree with the model's config. */
static void
check_dim(const char *name, const char *model, FunctionCallInfo fcinfo, int i, int have)
{
	if (!PG_ARGISNULL(i) && PG_GETARG_INT32(i) != have)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_train: %s = %d, but model \"%s\" has %s = %d",
						name, PG_GETARG_INT32(i), model, name, have),
				 errhint("The dimensions default to the model's (llm_model_config); leave them NULL.")));
}

/* Threads for a kernel phase: NULL = pg_llm.threads; more than the cores needs a superuser. */
static int
workers_arg(FunctionCallInfo fcinfo, int i, const char *name)
{
	int			n;

	if (PG_ARGISNULL(i))
		return llm_pool_threads();
	n = PG_GETARG_INT32(i);
	if (n < 1 || n > 256)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_train: %s must be in [1, 256], not %d", name, n)));
	if (n > llm_cpu_count() && !superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("llm_train: %s = %d is more than the %d cores this process may use",
						name, n, llm_cpu_count()),
				 errhint("Only a superuser may use more threads than cores.")));
	return n;
}

static void
read_settings(FunctionCallInfo fcinfo, LlmTrainRun *run)
{
	int			decay_steps;

	for (int i = 0; i <= A_LR; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("llm_train: model, steps, batch_size and lr must not be NULL")));
	run->model = text_to_cstring(PG_GETARG_TEXT_PP(A_MODEL));
	run->steps = PG_GETARG_INT32(A_STEPS);
	run->batch_size = PG_GETARG_INT32(A_BATCH_SIZE);
	require(run->steps >= 1, "steps must be >= 1", run->steps);
	require(run->batch_size >= 1 && run->batch_size <= 65536, "batch_size must be in [1, 65536]",
			run->batch_size);
	run->hp = llm_adamw_settings(who, PG_GETARG_FLOAT8(A_LR),
								 float_arg(fcinfo, A_WEIGHT_DECAY, 0.1),
								 float_arg(fcinfo, A_BETA1, 0.9), float_arg(fcinfo, A_BETA2, 0.95),
								 float_arg(fcinfo, A_EPS, 1e-8));
	run->schedule.lr = run->hp.lr;
	run->schedule.warmup_steps = int_arg(fcinfo, A_WARMUP, 0);
	run->schedule.min_lr = float_arg(fcinfo, A_MIN_LR, run->hp.lr / 10);
	decay_steps = int_arg(fcinfo, A_DECAY_STEPS, run->steps);
	require(run->schedule.warmup_steps >= 0, "warmup must be >= 0", run->schedule.warmup_steps);
	require(decay_steps > run->schedule.warmup_steps, "decay_steps must be more than warmup",
			decay_steps);
	run->schedule.decay_steps = decay_steps;
	require(run->schedule.min_lr >= 0 && run->schedule.min_lr <= run->hp.lr,
			"min_lr must be in [0, lr]", run->schedule.min_lr);
	run->clip = float_arg(fcinfo, A_CLIP, -1);
	require(PG_ARGISNULL(A_CLIP) || (run->clip > 0 && !isinf(run->clip)),
			"clip must be positive and finite (or NULL: no clipping)", run->clip);
	run->seed = PG_ARGISNULL(A_SEED) ? 0 : PG_GETARG_INT64(A_SEED);
	run->grad_threads = workers_arg(fcinfo, A_GRAD_WORKERS, "grad_workers");
	run->optim_threads = workers_arg(fcinfo, A_OPTIMIZER_WORKERS, "optimizer_workers");
	run->save_every = int_arg(fcinfo, A_SAVE_EVERY, 50);
	require(run->save_every >= 1, "save_every must be >= 1", run->save_every);
	run->notice_every = int_arg(fcinfo, A_NOTICE_EVERY, 1);
	require(run->notice_every >= 0, "notice_every must be >= 0 (0: no notices)", run->notice_every);
	run->split = PG_ARGISNULL(A_SPLIT) ? "train" : text_to_cstring(PG_GETARG_TEXT_PP(A_SPLIT));
	/* (a 0.2.0 catalog's llm_train has no dataset: it draws from the whole split) */
	if (PG_NARGS() > A_DATASET)
		run->dataset = PG_ARGISNULL(A_DATASET) ? GetUserNameFromId(GetUserId(), false) :
			text_to_cstring(PG_GETARG_TEXT_PP(A_DATASET));
	/* (nor a run) */
	run->name = PG_NARGS() <= A_RUN || PG_ARGISNULL(A_RUN) ? NULL
		: text_to_cstring(PG_GETARG_TEXT_PP(A_RUN));
	/* (nor a dtype: fp32) */
	run->dtype = PG_NARGS() <= A_DTYPE || PG_ARGISNULL(A_DTYPE) ? "fp32"
		: text_to_cstring(PG_GETARG_TEXT_PP(A_DTYPE));
}

/* The ids of the training examples (SPI connected), into mcxt. */
static void
read_example_ids(LlmTrainRun *run, MemoryContext mcxt)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2] = {CStringGetTextDatum(run->split),
						   run->dataset ? CStringGetTextDatum(run->dataset) : (Datum) 0};
	int			ret = SPI_execute_with_args(psprintf("SELECT id FROM %s WHERE split = $1%s ORDER BY id",
													 llm_table_name("llm_dataset"),
													 run->dataset ? " AND dataset = $2" : ""),
											run->dataset ? 2 : 1, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "llm_train: reading llm_dataset failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("llm_train: dataset \"%s\" has no examples in split \"%s\"",
						run->dataset ? run->dataset : "(any)", run->split),
				 errhint("SELECT llm_dataset_from_tokens(tokens, block_size) adds some.")));
	run->n_ids = (int) SPI_processed;
	run->ids = MemoryContextAlloc(mcxt, sizeof(int64) * run->n_ids);
	for (int i = 0; i < run->n_ids; i++)
	{
		bool		isnull;

		run->ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
												  1, &isnull));
	}
}

/* The batch of update number `step`: ids and their rows, [B, T]. */
static LlmBatch
draw_batch(const LlmTrainRun *run, const Gpt2Config *cfg, int64 step, int64 *ids)
{
	LlmRng		rng;
	Datum	   *d = palloc(sizeof(Datum) * run->batch_size);
	ArrayType  *arr;
	Oid			argtype = INT8ARRAYOID;
	Datum		arg;
	int32	   *tokens = NULL,
			   *targets = NULL;
	LlmBatch	b = {0};
	int			ret;

	llm_rng_seed(&rng, (uint64) run->seed * UINT64_C(0x9E3779B97F4A7C15) ^ (uint64) step);
	for (int i = 0; i < run->batch_size; i++)
	{
		ids[i] = run->ids[(int64) (llm_rng_uniform(&rng) * run->n_ids)];
		d[i] = Int64GetDatum(ids[i]);
	}
	arr = construct_array(d, run->batch_size, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
						  TYPALIGN_DOUBLE);
	arg = PointerGetDatum(arr);
	ret = SPI_execute_with_args(psprintf("SELECT e.tokens, e.target FROM pg_catalog.unnest($1) "
										 "WITH ORDINALITY AS u(id, n) JOIN %s e ON e.id = u.id "
										 "ORDER BY u.n", llm_table_name("llm_dataset")),
								1, &argtype, &arg, NULL, true, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != (uint64) run->batch_size)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_train: examples of llm_dataset vanished during the run")));
	for (int i = 0; i < run->batch_size; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		ArrayType  *tok = DatumGetArrayTypeP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		ArrayType  *tgt = DatumGetArrayTypeP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		int			n;
		int32	   *tv = int_array_values(who, "llm_dataset.tokens", tok, 1, &n);
		int32	   *gv = int_array_values(who, "llm_dataset.target", tgt, 1, &n);

		if (i == 0)
		{
			b.T = n;
			tokens = palloc(sizeof(int32) * run->batch_size * n);
			targets = palloc(sizeof(int32) * run->batch_size * n);
		}
		else if (n != b.T)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("llm_train: examples " INT64_FORMAT " and " INT64_FORMAT
							" have %d and %d tokens; a batch needs one length",
							ids[0], ids[i], b.T, n),
					 errhint("Cut the training text into blocks of one size (llm_dataset_from_tokens).")));
		memcpy(tokens + (int64) i * n, tv, sizeof(int32) * n);
		memcpy(targets + (int64) i * n, gv, sizeof(int32) * n);
	}
	b.B = run->batch_size;
	b.tokens = tokens;
	b.targets = targets;
	llm_batch_check(who, &b, cfg, run->model);
	return b;
}

/* One step: batch, gradients, clip, AdamW, the log rows.  Returns the loss. */
static double
train_one_step(const LlmTrainRun *run, LlmTrainState *st, int i)
{
	int64	   *ids = palloc(sizeof(int64) * run->batch_size);
	LlmBatch	b = draw_batch(run, &st->cfg, st->step, ids);
	LlmTrainLogEntry entry = {0};
	LlmAdamW	hp = run->hp;
	instr_time	start,
				took;

	hp.lr = llm_lr_at(&run->schedule, i);

	INSTR_TIME_SET_CURRENT(start);
	llm_pool_set_threads(run->grad_threads);
	entry.loss = llm_train_state_gradients(st, &b);
	llm_pool_set_threads(run->optim_threads);
	llm_train_state_clip(st, run->clip);
	llm_train_state_adamw(st, &hp);
	INSTR_TIME_SET_CURRENT(took);
	INSTR_TIME_SUBTRACT(took, start);

	entry.lr = hp.lr;
	entry.tokens_per_s = (double) b.B * b.T / Max(INSTR_TIME_GET_DOUBLE(took), 1e-9);
	entry.batch = ids;
	entry.batch_size = run->batch_size;
	entry.hp = hp;
	entry.clip = run->clip;
	llm_train_state_log(st, &entry);
	llm_train_state_record_grad_stats(st);
	return entry.loss;
}

/*
 * CALL llm_train(model, steps, batch_size, lr, warmup, min_lr, weight_decay,
 * clip, seed, grad_workers, optimizer_workers, n_layer, n_head, d, vocab,
 * save_every, beta1, beta2, eps, decay_steps, notice_every, split, dataset, run, dtype)
 */
PG_FUNCTION_INFO_V1(llm_train);
Datum
llm_train(PG_FUNCTION_ARGS)
{
	bool		nonatomic = fcinfo->context != NULL && IsA(fcinfo->context, CallContext) &&
		!castNode(CallContext, fcinfo->context)->atomic;
	int			threads_before = llm_pool_threads();
	MemoryContext run_cxt;
	MemoryContext step_cxt;
	LlmTrainRun run = {0};
	LlmTrainState *volatile st = NULL;

	read_settings(fcinfo, &run);
	if (!nonatomic)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("llm_train must be CALLed outside a transaction block"),
				 errdetail("It COMMITs after every step."),
				 errhint("For one step inside a transaction, use SELECT llm_train_step(...).")));

	/* Outlives the step transactions; freed below whatever happens. */
	run_cxt = AllocSetContextCreate(TopMemoryContext, "pg_llm llm_train", ALLOCSET_DEFAULT_SIZES);
	step_cxt = AllocSetContextCreate(run_cxt, "pg_llm llm_train step", ALLOCSET_DEFAULT_SIZES);
	run.model = MemoryContextStrdup(run_cxt, run.model);
	run.split = MemoryContextStrdup(run_cxt, run.split);
	if (run.dataset)
		run.dataset = MemoryContextStrdup(run_cxt, run.dataset);
	if (run.name != NULL)
		run.name = MemoryContextStrdup(run_cxt, run.name);
	run.dtype = MemoryContextStrdup(run_cxt, run.dtype);
	PG_TRY();
	{
		int64		last_saved;
		int			done;

		SPI_connect_ext(SPI_OPT_NONATOMIC);
		PushActiveSnapshot(GetTransactionSnapshot());
		st = llm_train_state_load(run.model, 0, run_cxt);
		llm_train_state_set_dtype(st, who, run.dtype);
		check_dim("n_layer", run.model, fcinfo, A_N_LAYER, st->cfg.n_layer);
		check_dim("n_head", run.model, fcinfo, A_N_HEAD, st->cfg.n_head);
		check_dim("d", run.model, fcinfo, A_D, st->cfg.n_embd);
		check_dim("vocab", run.model, fcinfo, A_VOCAB, st->cfg.vocab_size);
		read_example_ids(&run, run_cxt);
		done = llm_train_run_open(&run, st);
		last_saved = st->step;
		PopActiveSnapshot();
		if (done == run.steps)
			ereport(NOTICE,
					(errmsg("llm_train: run \"%s\" of model \"%s\" is complete: its %d steps are done",
							run.name, run.model, run.steps)));

		for (int i = done; i < run.steps; i++)
		{
			MemoryContext old = MemoryContextSwitchTo(step_cxt);
			double		loss;

			CHECK_FOR_INTERRUPTS();
			PushActiveSnapshot(GetTransactionSnapshot());
			loss = train_one_step(&run, st, i);
			if ((i + 1) % run.save_every == 0 || i + 1 == run.steps)
			{
				llm_train_state_write_back(st, false);
				last_saved = st->step;
			}
			PopActiveSnapshot();
			MemoryContextSwitchTo(old);
			MemoryContextReset(step_cxt);
			SPI_commit();
			if (run.notice_every > 0 && ((i + 1) % run.notice_every == 0 || i + 1 == run.steps))
				ereport(NOTICE,
						(errmsg("llm_train \"%s\": step " INT64_FORMAT " (%d of %d), loss %.6f%s",
								run.model, st->step, i + 1, run.steps, loss,
								last_saved == st->step ? ", saved" : "")));
		}
		SPI_finish();
	}
	PG_FINALLY();
	{
		llm_pool_set_threads(threads_before);
		MemoryContextDelete(run_cxt);
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}
