/*
 * lineage.c -- the history of a model's weights (state.h): which logged
 * steps the weights in llm_param are the result of.
 *
 * A step's row of llm_train_log commits as soon as the step is taken, but
 * its weights only reach llm_param at the next write-back.  So each
 * write-back, in its own transaction, adds a row to llm_train_lineage (the
 * version it wrote, the row it built on) and stamps the log rows of the
 * steps it wrote back with that row's id.  A crash before the write-back
 * commits leaves those log rows unstamped: lost, and out of
 * llm_train_history, which follows the chain of llm_train_lineage rows
 * back from the model's newest (sql/80_train.sql).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "support/support.h"
#include "train/state.h"

void
llm_train_state_read_history(LlmTrainState *st)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(st->model);
	bool		isnull;
	Datum		head;

	st->lineage = 0;
	if (SPI_execute(psprintf("SELECT pg_catalog.to_regclass(%s) IS NOT NULL",
							 quote_literal_cstr(llm_table_name("llm_train_lineage"))),
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: looking for llm_train_lineage failed");
	st->keeps_history = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
												   1, &isnull));
	if (!st->keeps_history)
		return;
	if (SPI_execute_with_args(psprintf("SELECT %s($1)", llm_table_name("llm_train_head")),
							  1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "pg_llm: reading the history of model \"%s\" failed", st->model);
	head = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	st->lineage = isnull ? 0 : DatumGetInt64(head);
}

void
llm_train_state_note_log(LlmTrainState *st, int64 log_id)
{
	if (st->n_unsaved_log == st->max_unsaved_log)
	{
		st->max_unsaved_log = Max(16, 2 * st->max_unsaved_log);
		st->unsaved_log = st->unsaved_log == NULL
			? MemoryContextAlloc(st->mcxt, sizeof(int64) * st->max_unsaved_log)
			: repalloc(st->unsaved_log, sizeof(int64) * st->max_unsaved_log);
	}
	st->unsaved_log[st->n_unsaved_log++] = log_id;
}

/* INSERT the llm_train_lineage row of the write-back; returns its id. */
static int64
insert_lineage(const LlmTrainState *st)
{
	Oid			types[5] = {TEXTOID, INT4OID, INT8OID, INT8OID, TEXTOID};
	Datum		values[5] = {CStringGetTextDatum(st->model), Int32GetDatum((int32) st->step),
		Int64GetDatum(st->version), Int64GetDatum(st->lineage), (Datum) 0};
	char		nulls[5] = {' ', ' ', ' ', st->lineage == 0 ? 'n' : ' ', st->run == NULL ? 'n' : ' '};
	bool		isnull;

	if (st->run != NULL)
		values[4] = CStringGetTextDatum(st->run);
	if (SPI_execute_with_args(psprintf("INSERT INTO %s (model, step, version, parent, run) "
									   "VALUES ($1, $2, $3, $4, $5) RETURNING id",
									   llm_table_name("llm_train_lineage")),
							  5, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "pg_llm: writing llm_train_lineage failed");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* Stamp the noted llm_train_log rows with the write-back's row. */
static void
stamp_log(const LlmTrainState *st, int64 lineage)
{
	Oid			types[2] = {INT8OID, INT8ARRAYOID};
	Datum	   *ids = palloc(sizeof(Datum) * Max(st->n_unsaved_log, 1));
	Datum		values[2];

	for (int i = 0; i < st->n_unsaved_log; i++)
		ids[i] = Int64GetDatum(st->unsaved_log[i]);
	values[0] = Int64GetDatum(lineage);
	values[1] = PointerGetDatum(construct_array(ids, st->n_unsaved_log, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_with_args(psprintf("UPDATE %s SET lineage = $1 WHERE id = ANY ($2)",
									   llm_table_name("llm_train_log")),
							  2, types, values, NULL, false, 0) != SPI_OK_UPDATE ||
		SPI_processed != (uint64) st->n_unsaved_log)
		elog(ERROR, "pg_llm: stamping the llm_train_log rows of model \"%s\" failed", st->model);
}

void
llm_train_state_record_write_back(LlmTrainState *st)
{
	int64		lineage;

	if (!st->keeps_history)
		return;
	lineage = insert_lineage(st);
	stamp_log(st, lineage);
	st->lineage = lineage;
	st->n_unsaved_log = 0;
}
