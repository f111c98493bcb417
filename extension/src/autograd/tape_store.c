/*
 * tape_store.c -- the tape as tables: llm_tensor_rt (one row per tensor)
 * and llm_tape (one row per op), written through SPI at the end of every
 * top-level statement that added to the tape or changed its gradients.
 *
 * Why tables and not views over backend memory: a second session (a live
 * plot, a learner's other notebook) sees the tape once the recording
 * statement commits, and joins with llm_param are ordinary joins.  Why at
 * the end of the statement and not in the op: an op may run while the
 * planner folds constants, inside an index expression or a read-only
 * query; the end of the executor is a place where writing is always
 * allowed (unless the transaction is read-only: then the rows wait for the
 * next statement that may write).
 *
 * The tables llm_tape_all and llm_tensor_rt_all hold every session's tape,
 * keyed by (session, id), session being the backend's pid; the views llm_tape
 * and llm_tensor_rt show the reading session's rows.  A class shares one
 * server: the first store of a fresh tape deletes this session's rows and
 * those of sessions that have ended (a pid no backend has any more), never a
 * live neighbour's (llm_tape_forget()).  Each row records its owner, whose
 * row-level security policies (90_classroom.sql) let a learner read only
 * their own, and pg_llm.max_tape_rows caps how many a session writes.  A
 * rollback undoes stored rows but not the tape in memory: the next store
 * writes the whole tape again.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "autograd/tape.h"

static ExecutorRun_hook_type prev_run;
static ExecutorFinish_hook_type prev_finish;
static int	depth;				/* executor nesting: 0 = a top-level statement */
static bool storing;			/* the store's own INSERTs must not store */
static bool stored_in_xact;
static int	max_tape_rows = 0;	/* pg_llm.max_tape_rows; 0: no limit */

static bool
store_pending(const Tape *t)
{
	return t->mcxt != NULL &&
		(t->n_tensors > t->stored_tensors || t->n_ops > t->stored_ops ||
		 t->grads_dirty || (t->tables_stale && t->n_tensors == 0));
}

#if PG_VERSION_NUM >= 180000
static void
tape_executor_run(QueryDesc *qd, ScanDirection dir, uint64 count)
#else
static void
tape_executor_run(QueryDesc *qd, ScanDirection dir, uint64 count, bool execute_once)
#endif
{
	depth++;
	PG_TRY();
	{
#if PG_VERSION_NUM >= 180000
		if (prev_run)
			prev_run(qd, dir, count);
		else
			standard_ExecutorRun(qd, dir, count);
#else
		if (prev_run)
			prev_run(qd, dir, count, execute_once);
		else
			standard_ExecutorRun(qd, dir, count, execute_once);
#endif
	}
	PG_FINALLY();
	{
		depth--;
	}
	PG_END_TRY();
}

static void
tape_executor_finish(QueryDesc *qd)
{
	depth++;
	PG_TRY();
	{
		if (prev_finish)
			prev_finish(qd);
		else
			standard_ExecutorFinish(qd);
	}
	PG_FINALLY();
	{
		depth--;
	}
	PG_END_TRY();
	if (depth == 0 && !storing && store_pending(tape_get()) && !XactReadOnly &&
		!IsParallelWorker() && !IsInParallelMode())
		tape_store();
}

/* A rollback took the stored rows away: write everything again next time. */
static void
tape_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		storing = false;
		depth = 0;
		if (stored_in_xact)
		{
			Tape	   *t = tape_get();

			t->stored_tensors = t->stored_ops = 0;
			t->grads_dirty = false;
			t->tables_stale = true;
		}
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		stored_in_xact = false;
}

static void
tape_subxact_callback(SubXactEvent event, SubTransactionId sub, SubTransactionId parent, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		storing = false;
		if (stored_in_xact)
		{
			Tape	   *t = tape_get();

			t->stored_tensors = t->stored_ops = 0;
			t->grads_dirty = false;
			t->tables_stale = true;
		}
	}
}

void
tape_store_init(void)
{
	DefineCustomIntVariable("pg_llm.max_tape_rows",
							"Most rows a session's autograd tape may write (llm_tape + llm_tensor_rt).",
							"0: no limit. A limit a class sets for learners (llm_classroom_init): "
							"only a superuser may change it.",
							&max_tape_rows, 0, 0, INT_MAX,
							PGC_SUSET, 0, NULL, NULL, NULL);
	prev_run = ExecutorRun_hook;
	ExecutorRun_hook = tape_executor_run;
	prev_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = tape_executor_finish;
	RegisterXactCallback(tape_xact_callback, NULL);
	RegisterSubXactCallback(tape_subxact_callback, NULL);
}

/* ---- writing -------------------------------------------------------------- */

static Datum
int_array(const int64 *values, int n)
{
	Datum	   *d = palloc(Max(n, 1) * sizeof(Datum));

	for (int i = 0; i < n; i++)
		d[i] = Int32GetDatum((int32) values[i]);
	return PointerGetDatum(construct_array(d, n, INT4OID, 4, true, TYPALIGN_INT));
}

static Datum
tensor_datum(const TapeTensor *node, const float *values)
{
	Tensor	   *t = tensor_new(node->ndim, node->dims);

	memcpy(t->data, values, node->numel * sizeof(float));
	return PointerGetDatum(t);
}

static void
execute(SPIPlanPtr plan, Datum *values, const char *nulls, int expected)
{
	int			ret = SPI_execute_plan(plan, values, nulls, false, 0);

	if (ret != expected)
		elog(ERROR, "pg_llm: writing the autograd tape failed: %s", SPI_result_code_string(ret));
}

static void
store_tensors(Tape *t, Oid tensor_type)
{
	Oid			types[7] = {INT4OID, INT4ARRAYOID, tensor_type, tensor_type, TEXTOID, INT4OID, INT4OID};
	SPIPlanPtr	insert = SPI_prepare(psprintf("INSERT INTO %s (id, shape, data, grad, param_name, produced_by, session) "
											  "VALUES ($1, $2, $3, $4, $5, $6, $7)",
											  llm_table_name("llm_tensor_rt_all")), 7, types);

	for (int32 id = t->stored_tensors + 1; id <= t->n_tensors; id++)
	{
		TapeTensor *node = &t->tensors[id];
		Datum		values[7];
		char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

		values[0] = Int32GetDatum(id);
		values[1] = int_array(node->dims, node->ndim);
		values[2] = node->data ? tensor_datum(node, node->data) : (nulls[2] = 'n', (Datum) 0);
		values[3] = node->grad ? tensor_datum(node, node->grad) : (nulls[3] = 'n', (Datum) 0);
		values[4] = node->param_name ? CStringGetTextDatum(node->param_name) : (nulls[4] = 'n', (Datum) 0);
		values[5] = Int32GetDatum(node->produced_by);
		if (node->produced_by == 0)
			nulls[5] = 'n';
		values[6] = Int32GetDatum(MyProcPid);
		execute(insert, values, nulls, SPI_OK_INSERT);
	}
}

static void
store_grads(Tape *t, Oid tensor_type)
{
	Oid			types[3] = {INT4OID, tensor_type, INT4OID};
	SPIPlanPtr	update = SPI_prepare(psprintf("UPDATE %s SET grad = $2 WHERE session = $3 AND id = $1",
											  llm_table_name("llm_tensor_rt_all")), 3, types);

	for (int32 id = 1; id <= t->stored_tensors; id++)
	{
		TapeTensor *node = &t->tensors[id];
		Datum		values[3];
		char		nulls[3] = {' ', ' ', ' '};

		values[0] = Int32GetDatum(id);
		values[2] = Int32GetDatum(MyProcPid);
		values[1] = node->grad ? tensor_datum(node, node->grad) : (nulls[1] = 'n', (Datum) 0);
		execute(update, values, nulls, SPI_OK_UPDATE);
	}
}

static void
store_ops(Tape *t)
{
	Oid			types[7] = {INT4OID, TEXTOID, INT4ARRAYOID, INT4OID, INT4ARRAYOID, TEXTOID, INT4OID};
	SPIPlanPtr	insert = SPI_prepare(psprintf("INSERT INTO %s (id, op, inputs, output, shape, attrs, session) "
											  "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
											  llm_table_name("llm_tape_all")), 7, types);

	for (int32 id = t->stored_ops + 1; id <= t->n_ops; id++)
	{
		TapeOp	   *op = &t->ops[id];
		TapeTensor *out = &t->tensors[op->output];
		const TapeOpMethods *methods = tape_ops[op->kind].methods;
		int64		inputs[TAPE_MAX_INPUTS];
		Datum		values[7];

		for (int i = 0; i < op->n_inputs; i++)
			inputs[i] = op->inputs[i];
		values[0] = Int32GetDatum(id);
		values[1] = CStringGetTextDatum(tape_ops[op->kind].name);
		values[2] = int_array(inputs, op->n_inputs);
		values[3] = Int32GetDatum(op->output);
		values[4] = int_array(out->dims, out->ndim);
		values[5] = CStringGetTextDatum(methods->attrs_json ? methods->attrs_json(op) : "{}");
		values[6] = Int32GetDatum(MyProcPid);
		execute(insert, values, NULL, SPI_OK_INSERT);
	}
}

/*
 * ERROR 54000 when the tape holds more rows than pg_llm.max_tape_rows.  The
 * tape is forgotten first: the statements after this one must not fail on
 * the same rows.
 */
static void
check_tape_rows(const Tape *t)
{
	int64		rows = (int64) t->n_tensors + t->n_ops;
	int32		tensors = t->n_tensors;
	int32		ops = t->n_ops;

	if (max_tape_rows == 0 || rows <= max_tape_rows)
		return;
	tape_reset();
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("the autograd tape would have " INT64_FORMAT " rows (%d tensors, %d ops), "
					"more than pg_llm.max_tape_rows = %d", rows, tensors, ops, max_tape_rows),
			 errdetail("The tape has been forgotten."),
			 errhint("Record a smaller computation (a shorter sequence, fewer layers), "
					 "or ask for a higher pg_llm.max_tape_rows.")));
}

void
tape_store(void)
{
	Tape	   *t = tape_get();
	Oid			relid = llm_table_oid("llm_tensor_rt_all");
	Oid			tensor_type = get_atttype(relid, get_attnum(relid, "data"));
	bool		push = !ActiveSnapshotSet();

	check_tape_rows(t);
	storing = true;
	stored_in_xact = true;
	/* A SELECT's portal finishes its executor with no active snapshot. */
	if (push)
		PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (t->stored_tensors == 0 && t->stored_ops == 0)
	{
		/* A fresh tape: the tables held another (or a rolled back) one. */
		if (SPI_execute(psprintf("SELECT %s()", llm_table_name("llm_tape_forget")), false, 0) != SPI_OK_SELECT)
			elog(ERROR, "pg_llm: clearing the autograd tape's tables failed");
		t->tables_stale = false;
	}
	if (t->grads_dirty)
		store_grads(t, tensor_type);
	store_tensors(t, tensor_type);
	store_ops(t);
	SPI_finish();
	if (push)
		PopActiveSnapshot();
	t->stored_tensors = t->n_tensors;
	t->stored_ops = t->n_ops;
	t->grads_dirty = false;
	storing = false;
}
