/*
 * run.c -- named training runs (run.h): recorded by their first call in
 * llm_train_run, continued by the same call again.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "support/support.h"
#include "train/run.h"

/* A column of llm_train_run that a call continuing the run must repeat. */
typedef struct RunSetting
{
	const char *column;
	Oid			type;			/* INT4OID, INT8OID, FLOAT8OID or TEXTOID */
	Datum		value;
	bool		isnull;
} RunSetting;

#define N_SETTINGS 17

/* The settings of the call, as llm_train_run stores them. */
static void
call_settings(const LlmTrainRun *run, RunSetting *s)
{
	/* the batches index the split's ids: the same ids, the same batches */
	uint64		checksum = hash_bytes_extended((const unsigned char *) run->ids,
											   sizeof(int64) * run->n_ids, 0);
	RunSetting	all[N_SETTINGS] = {
		{"steps", INT4OID, Int32GetDatum(run->steps), false},
		{"batch_size", INT4OID, Int32GetDatum(run->batch_size), false},
		{"lr", FLOAT8OID, Float8GetDatum(run->hp.lr), false},
		{"warmup", INT4OID, Int32GetDatum((int32) run->schedule.warmup_steps), false},
		{"min_lr", FLOAT8OID, Float8GetDatum(run->schedule.min_lr), false},
		{"decay_steps", INT4OID, Int32GetDatum((int32) run->schedule.decay_steps), false},
		{"weight_decay", FLOAT8OID, Float8GetDatum(run->hp.weight_decay), false},
		{"clip", FLOAT8OID, Float8GetDatum(run->clip), run->clip <= 0},
		{"beta1", FLOAT8OID, Float8GetDatum(run->hp.beta1), false},
		{"beta2", FLOAT8OID, Float8GetDatum(run->hp.beta2), false},
		{"eps", FLOAT8OID, Float8GetDatum(run->hp.eps), false},
		{"seed", INT8OID, Int64GetDatum(run->seed), false},
		{"dataset", TEXTOID, run->dataset ? CStringGetTextDatum(run->dataset) : (Datum) 0, run->dataset == NULL},
		{"split", TEXTOID, CStringGetTextDatum(run->split), false},
		{"examples", INT4OID, Int32GetDatum(run->n_ids), false},
		{"examples_checksum", INT8OID, Int64GetDatum((int64) checksum), false},
		{"dtype", TEXTOID, CStringGetTextDatum(run->dtype), false},
	};

	memcpy(s, all, sizeof(all));
}

static char *
setting_text(Oid type, Datum value, bool isnull)
{
	Oid			output;
	bool		varlena;

	if (isnull)
		return "NULL";
	getTypeOutputInfo(type, &output, &varlena);
	return OidOutputFunctionCall(output, value);
}

/* The same value, bit for bit (text: the same string). */
static bool
same_setting(Oid type, Datum a, bool a_null, Datum b, bool b_null)
{
	if (a_null || b_null)
		return a_null == b_null;
	if (type == TEXTOID)
		return strcmp(TextDatumGetCString(a), TextDatumGetCString(b)) == 0;
	return a == b;				/* int4, int8 and float8 are passed by value */
}

static void
record_run(const LlmTrainRun *run, const LlmTrainState *st, const RunSetting *s)
{
	Oid			types[N_SETTINGS + 4];
	Datum		values[N_SETTINGS + 4];
	char		nulls[N_SETTINGS + 4];
	StringInfoData columns;
	StringInfoData params;

	initStringInfo(&columns);
	initStringInfo(&params);
	appendStringInfoString(&columns, "model, run, start_step, start_lineage");
	appendStringInfoString(&params, "$1, $2, $3, $4");
	types[0] = TEXTOID;
	values[0] = CStringGetTextDatum(run->model);
	types[1] = TEXTOID;
	values[1] = CStringGetTextDatum(run->name);
	types[2] = INT4OID;
	values[2] = Int32GetDatum((int32) st->step);
	types[3] = INT8OID;
	values[3] = Int64GetDatum(st->lineage);
	memset(nulls, ' ', sizeof(nulls));
	nulls[3] = st->lineage == 0 ? 'n' : ' ';
	for (int i = 0; i < N_SETTINGS; i++)
	{
		appendStringInfo(&columns, ", %s", s[i].column);
		appendStringInfo(&params, ", $%d", i + 5);
		types[i + 4] = s[i].type;
		values[i + 4] = s[i].value;
		nulls[i + 4] = s[i].isnull ? 'n' : ' ';
	}
	if (SPI_execute_with_args(psprintf("INSERT INTO %s (%s) VALUES (%s)", llm_table_name("llm_train_run"),
									   columns.data, params.data),
							  N_SETTINGS + 4, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "pg_llm: recording run \"%s\" failed", run->name);
}

/* ERROR 22023 unless the call's settings are the recorded ones (columns 1..N_SETTINGS). */
static void
check_settings(const LlmTrainRun *run, const RunSetting *s, HeapTuple row, TupleDesc desc)
{
	StringInfoData differ;
	const char *first = NULL;

	initStringInfo(&differ);
	for (int i = 0; i < N_SETTINGS; i++)
	{
		bool		isnull;
		Datum		recorded = SPI_getbinval(row, desc, i + 1, &isnull);

		if (same_setting(s[i].type, s[i].value, s[i].isnull, recorded, isnull))
			continue;
		appendStringInfo(&differ, "%s%s = %s, not %s", differ.len > 0 ? "; " : "", s[i].column,
						 setting_text(s[i].type, recorded, isnull),
						 setting_text(s[i].type, s[i].value, s[i].isnull));
		if (first == NULL)
			first = s[i].column;
	}
	if (first != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_train: run \"%s\" of model \"%s\" was started with another %s",
						run->name, run->model, first),
				 errdetail("The run has %s.", differ.data),
				 errhint("Continue it with the settings it was started with (SELECT * FROM llm_train_run), "
						 "or start another run under a new name.")));
}

/* Does llm_train_lineage have row `lineage` of this run, or one of it at `step`? */
static bool
run_wrote(const LlmTrainRun *run, const char *where, int64 value)
{
	Oid			types[3] = {TEXTOID, TEXTOID, INT8OID};
	Datum		values[3] = {CStringGetTextDatum(run->model), CStringGetTextDatum(run->name),
		Int64GetDatum(value)};

	if (SPI_execute_with_args(psprintf("SELECT 1 FROM %s WHERE model = $1 AND run = $2 AND %s = $3",
									   llm_table_name("llm_train_lineage"), where),
							  3, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_train_lineage failed");
	return SPI_processed > 0;
}

int
llm_train_run_open(LlmTrainRun *run, LlmTrainState *st)
{
	RunSetting	s[N_SETTINGS];
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	StringInfoData columns;
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	int64		start_step;
	Datum		start_lineage;
	bool		no_start_lineage;

	st->run = run->name;
	if (run->name == NULL)
		return 0;
	if (run->name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_train: run must be a name, not an empty string (or NULL: no run)")));

	call_settings(run, s);
	initStringInfo(&columns);
	for (int i = 0; i < N_SETTINGS; i++)
		appendStringInfo(&columns, "%s, ", s[i].column);
	values[0] = CStringGetTextDatum(run->model);
	values[1] = CStringGetTextDatum(run->name);
	if (SPI_execute_with_args(psprintf("SELECT %sstart_step, start_lineage FROM %s "
									   "WHERE model = $1 AND run = $2",
									   columns.data, llm_table_name("llm_train_run")),
							  2, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_train_run failed");
	if (SPI_processed == 0)
	{
		record_run(run, st, s);
		return 0;
	}

	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	check_settings(run, s, row, desc);
	start_step = DatumGetInt32(SPI_getbinval(row, desc, N_SETTINGS + 1, &isnull));
	start_lineage = SPI_getbinval(row, desc, N_SETTINGS + 2, &no_start_lineage);

	/* at its start, or at one of its write-backs: go on from there */
	if ((st->step == start_step && st->lineage == (no_start_lineage ? 0 : DatumGetInt64(start_lineage))) ||
		(st->lineage != 0 && run_wrote(run, "id", st->lineage)))
		return (int) (st->step - start_step);
	if (run_wrote(run, "step", start_step + run->steps))
		return run->steps;		/* complete; the weights went on since */
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("llm_train: the weights of model \"%s\" are not where run \"%s\" left them",
					run->model, run->name),
			 errdetail("The model is at step " INT64_FORMAT "; the run began at step " INT64_FORMAT
					   " and was not the last to write its weights.", st->step, start_step),
			 errhint("Something else trained the model or loaded a checkpoint since "
					 "(SELECT * FROM llm_train_lineage WHERE model = '%s'); start a new run.",
					 run->model)));
	pg_unreachable();
}
