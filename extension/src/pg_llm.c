/*
 * pg_llm.c -- the module's entry point: _PG_init, the settings (GUCs), the
 * bridge between PostgreSQL's interrupt handling and the kernels' worker
 * pool, and the SQL functions that report the settings.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "autograd/tape.h"
#include "kernels/kernels.h"
#include "pg_llm.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static int	llm_threads = 1;
static int	llm_simd = -1;		/* -1 = auto, else an llm_isa */
static char *llm_default_model = NULL;
int			llm_shared_cache_mb = 1024;
int			llm_inference_dtype = LLM_INFERENCE_FP32;
bool		llm_decode_batching = true;

static const struct config_enum_entry simd_options[] = {
	{"auto", -1, false},
	{"scalar", LLM_ISA_SCALAR, false},
	{"avx2", LLM_ISA_AVX2, false},
	{"avx512", LLM_ISA_AVX512, false},
	{"neon", LLM_ISA_NEON, false},
	{NULL, 0, false}
};

static const struct config_enum_entry inference_dtype_options[] = {
	{"fp32", LLM_INFERENCE_FP32, false},
	{"bf16", LLM_INFERENCE_BF16, false},
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
	/* auto (-1), or an ISA this CPU lacks: the best it has */
	llm_set_isa((llm_isa) newval);
}

/* Polled by the calling thread between kernel tasks; never by workers. */
static int
interrupt_pending(void)
{
	return QueryCancelPending || ProcDiePending;
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
	DefineCustomIntVariable("pg_llm.shared_cache_size",
							"Memory for decoded model weights, shared by every session.",
							"Each model version is decoded once and kept while this allows; "
							"versions no session uses are evicted, least recently used first. "
							"A model larger than this is decoded for each call; a lower value "
							"evicts at the next decode. "
							"On PostgreSQL 15-16 each session has a cache of this size.",
							&llm_shared_cache_mb, 1024, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MB, NULL, NULL, NULL);
	DefineCustomEnumVariable("pg_llm.inference_dtype",
							 "Number format of the weight matrices generation and inference read.",
							 "bf16 rounds every 2-D weight (wte, wpe and the matrices of each "
							 "block) to bfloat16, to nearest even, and caches that copy: half "
							 "the memory and the bytes read per token. Biases, LayerNorm, "
							 "activations and sums stay fp32: the logits are fp32 arithmetic "
							 "over the rounded weights. Training (llm_train's dtype) and calls "
							 "recording for autograd are not affected.",
							 &llm_inference_dtype, LLM_INFERENCE_FP32, inference_dtype_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("pg_llm.decode_batching",
							 "Decode together with other sessions generating from the same model.",
							 "Each decode step is computed in one pass over the weights with the "
							 "steps of the other sessions generating from the same model version; "
							 "the tokens are the same bits as alone. "
							 "PostgreSQL 17 and later; on 15-16 every session decodes alone.",
							 &llm_decode_batching, true,
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
	char	   *s = psprintf("{\"version\": \"" PG_LLM_VERSION "\", \"simd\": \"%s\", \"threads\": %d, \"cores\": %d}",
							 llm_isa_name(llm_cpu_isa()), llm_pool_threads(), llm_cpu_count());

	PG_RETURN_TEXT_P(cstring_to_text(s));
}
