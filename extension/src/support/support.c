/*
 * support.c -- kernel status to PostgreSQL errors, large allocations, the
 * names of the extension's own tables, and who may change a model (support.h).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "common/int.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rls.h"

#include "kernels/kernels.h"
#include "support/support.h"

void
llm_check_status(int status)
{
	if (status == LLM_OK)
		return;
	if (status == LLM_NOMEM)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory in a pg_llm kernel")));
	CHECK_FOR_INTERRUPTS();
	/* Interrupts may be held off: the work is incomplete all the same. */
	ereport(ERROR,
			(errcode(ERRCODE_QUERY_CANCELED),
			 errmsg("canceling statement due to user request")));
}

/*
 * palloc that may exceed 1 GB (MCXT_ALLOC_HUGE) and that returns NULL instead
 * of raising a generic error when memory runs out (MCXT_ALLOC_NO_OOM), so
 * that we can say what we were allocating.
 */
void *
llm_alloc_huge(Size bytes, const char *what)
{
	void	   *p = MemoryContextAllocExtended(CurrentMemoryContext, Max(bytes, 1),
											   MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);

	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory allocating %s (%.1f MB)",
						what, (double) bytes / (1024.0 * 1024.0))));
	return p;
}

float *
llm_alloc_floats(int64 rows, int64 cols, const char *what)
{
	int64		n;
	int64		bytes;

	if (rows < 0 || cols < 0 || pg_mul_s64_overflow(rows, cols, &n) ||
		pg_mul_s64_overflow(n, (int64) sizeof(float), &bytes))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s of shape [" INT64_FORMAT "," INT64_FORMAT "] are too large",
						what, rows, cols)));
	return llm_alloc_huge((Size) bytes, what);
}

/* ---- the extension's schema and tables ------------------------------------ */

Oid
llm_extension_schema(void)
{
	Oid			extension = get_extension_oid("pg_llm", false);

#if PG_VERSION_NUM >= 160000
	return get_extension_schema(extension);
#else
	/* get_extension_schema() is static before PostgreSQL 16: read pg_extension. */
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			schema = InvalidOid;

	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extension));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		schema = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return schema;
#endif
}

char *
llm_table_name(const char *name)
{
	return quote_qualified_identifier(get_namespace_name(llm_extension_schema()), name);
}

Oid
llm_table_oid(const char *name)
{
	Oid			relid = get_relname_relid(name, llm_extension_schema());

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("pg_llm: table \"%s\" of the extension is missing", name)));
	return relid;
}

void
llm_require_model_owner(const char *model)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(model);

	/* a superuser, the tables' owner, or a catalog older than row security */
	if (check_enable_rls(llm_table_oid("llm_model_config"), InvalidOid, true) != RLS_ENABLED)
		return;
	SPI_connect();
	if (SPI_execute_with_args(psprintf("SELECT %s($1)", llm_table_name("llm_require_model_owner")),
							  1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: checking the owner of model \"%s\" failed", model);
	SPI_finish();
}

void
llm_commit_durably(void)
{
	if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
		(void) set_config_option("synchronous_commit", "on", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
}
