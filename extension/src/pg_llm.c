/*
 * pg_llm.c -- module entry point: settings (GUCs), the bridge between
 * PostgreSQL's interrupt handling and the kernels' worker pool, large
 * allocations, and the names of the extension's own tables.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "common/int.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "autograd/tape.h"
#include "kernels/kernels.h"
#include "pg_llm.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static int	llm_threads = 1;
static int	llm_simd = -1;		/* -1 = auto, else an llm_isa */
static char *llm_default_model = NULL;

static const struct config_enum_entry simd_options[] = {
	{"auto", -1, false},
	{"scalar", LLM_ISA_SCALAR, false},
	{"avx2", LLM_ISA_AVX2, false},
	{"avx512", LLM_ISA_AVX512, false},
	{NULL, 0, false}
};

/*
 * Any user may set pg_llm.threads, but threads beyond the cores this process
 * may use only slow the kernels down and crowd out other sessions: above the
 * core count only a superuser may go (up to 256, e.g. to test
 * oversubscription).  Values from the server's configuration (postgresql.conf,
 * ALTER SYSTEM, ALTER ROLE ALL) and a parallel query's leader are trusted as
 * they are; outside a transaction no user can be asking.
 */
static bool
check_threads(int *newval, void **extra, GucSource source)
{
	int			cores = llm_cpu_count();

	if (*newval <= cores || source <= PGC_S_GLOBAL || IsParallelWorker() ||
		!IsTransactionState() || !OidIsValid(GetUserId()) || superuser())
		return true;
	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	GUC_check_errdetail("Only a superuser may use more threads than the %d cores this process may use.",
						cores);
	GUC_check_errhint("More threads than cores make the kernels slower, not faster.");
	return false;
}

static void
assign_threads(int newval, void *extra)
{
	llm_pool_set_threads(newval);
}

static void
assign_simd(int newval, void *extra)
{
	llm_set_isa(newval < 0 ? LLM_ISA_AVX512 : (llm_isa) newval);
}

/* Polled by the calling thread between kernel tasks; never by workers. */
static int
interrupt_pending(void)
{
	return QueryCancelPending || ProcDiePending;
}

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

void
_PG_init(void)
{
	int			cores = llm_cpu_count();

	llm_interrupt_hook = interrupt_pending;

	DefineCustomIntVariable("pg_llm.threads",
							"Threads used by pg_llm's kernels (the backend included).",
							"Defaults to the number of cores this process may use, which is "
							"also the most a role that is not superuser may set. "
							"Results are bit-identical at any value.",
							&llm_threads, cores, 1, 256,
							PGC_USERSET, 0, check_threads, assign_threads, NULL);
	DefineCustomEnumVariable("pg_llm.simd",
							 "Highest SIMD instruction set pg_llm's kernels may use.",
							 "auto picks the best the CPU supports; lower values are for testing.",
							 &llm_simd, -1, simd_options,
							 PGC_USERSET, 0, NULL, assign_simd, NULL);
	DefineCustomStringVariable("pg_llm.default_model",
							   "Model the text functions use when none is named.",
							   "llm_generate, llm_generate_stream and llm_beam_search read it "
							   "when their model argument is NULL or left out.",
							   &llm_default_model, "gpt2-small",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	autograd_init();
	MarkGUCPrefixReserved("pg_llm");
}

const char *
llm_model_or_default(const char *who, const char *model)
{
	if (model != NULL)
		return model;
	if (llm_default_model == NULL || llm_default_model[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: no model given and pg_llm.default_model is empty", who),
				 errhint("Pass model => '...', or SET pg_llm.default_model = '...'.")));
	return llm_default_model;
}

/* llm_default_model(): the model text functions use when none is named. */
PG_FUNCTION_INFO_V1(llm_default_model_sql);
Datum
llm_default_model_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(llm_model_or_default("llm_default_model", NULL)));
}

/* llm_info(): what the kernels run with, for humans and tests. */
PG_FUNCTION_INFO_V1(llm_info);
Datum
llm_info(PG_FUNCTION_ARGS)
{
	char	   *s = psprintf("{\"version\": \"0.1.0\", \"simd\": \"%s\", \"threads\": %d, \"cores\": %d}",
							 llm_isa_name(llm_cpu_isa()), llm_pool_threads(), llm_cpu_count());

	PG_RETURN_TEXT_P(cstring_to_text(s));
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
