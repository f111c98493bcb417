/*
 * model_cache.c -- the decoded-weight cache: a model's parameters, read from
 * llm_param once and kept in backend memory.
 *
 * A model's parameters are rows of llm_param, one `tensor` per HF name,
 * stored out of line (TOAST).  Reading and decoding 500 MB of them takes
 * about a second, far longer than generating a token, so we decode them
 * once into a single float array (the "arena") in backend memory and keep
 * it across calls, keyed by llm_model_config.version.  Every write to
 * llm_param -- an import, an optimizer step, a learner's manual UPDATE --
 * and every change to the model's row (n_head, layer_norm_eps, ...) bumps
 * that version through triggers (sql/30_model.sql), so a call that
 * sees the same version as the cache may use the cache, and any other
 * version forces a reload.  One model is cached at a time, per backend
 * (each connection has its own backend, hence its own cache).
 *
 * The cache never serves a role what it could not SELECT itself: every call
 * checks the current user's SELECT privilege on llm_param (the role may have
 * changed since the weights were cached: SET ROLE, SECURITY DEFINER), and
 * when row-level security applies to llm_param for that role, the weights
 * are read through its policies for that call only, neither served from the
 * cache nor kept in it.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rls.h"

#include "gpt2/model_cache.h"
#include "tensor/tensor.h"

/* A model bigger than this many floats (16 GB) is refused before allocating. */
#define MAX_MODEL_FLOATS ((double) (INT64CONST(1) << 32))

/* ---- reading the tables (SPI) ------------------------------------------ */

/*
 * Every query here runs with read_only = true.  For SPI that means: run in
 * the snapshot that is active for the calling SQL statement, do not take a
 * new one per query.  So the version read by gpt2_config_read() and the
 * parameters read by load_parameters() come from the *same* snapshot, and
 * the weights we cache are exactly the weights of the version we label
 * them with -- even if another session commits new weights in between.
 */

bool
gpt2_config_read(const char *model, Oid *relid, int64 *version, Gpt2Config *cfg)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(model);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	int			ret;

	ret = SPI_execute_with_args(psprintf("SELECT tableoid, version, n_layer, n_head, n_embd, "
										 "n_positions, vocab_size, layer_norm_eps, n_inner "
										 "FROM %s WHERE model = $1",
										 llm_table_name("llm_model_config")),
								1, &argtype, &arg, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_model_config failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return false;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	*relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
	*version = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	cfg->n_layer = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	cfg->n_head = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	cfg->n_embd = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
	cfg->n_positions = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
	cfg->vocab_size = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
	cfg->layer_norm_eps = DatumGetFloat4(SPI_getbinval(tup, desc, 8, &isnull));
	cfg->n_inner = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
	if (isnull)
		cfg->n_inner = 4 * cfg->n_embd;
	return true;
}

/* Refuse configs the table constraints should have refused already. */
void
gpt2_config_check(const char *model, const Gpt2Config *c)
{
	double		floats;

	if (c->n_layer < 1 || c->n_head < 1 || c->n_embd < 1 || c->n_positions < 1 ||
		c->vocab_size < 1 || c->n_inner < 1 || c->n_embd % c->n_head != 0 ||
		!(c->layer_norm_eps > 0))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("model \"%s\" has an invalid configuration", model)));

	/* Count in double first: a silly config must not overflow int64. */
	floats = (double) c->n_embd * ((double) c->vocab_size + c->n_positions + 2) +
		(double) c->n_layer * (4.0 * c->n_embd * c->n_embd + 2.0 * c->n_embd * c->n_inner);
	if (floats > MAX_MODEL_FLOATS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model \"%s\" has %.0f parameters, more than pg_llm can cache (%.0f)",
						model, floats, MAX_MODEL_FLOATS)));
}

/* "parameter \"wte.weight\"", or "m of parameter \"wte.weight\"" (for messages). */
static char *
param_label(const Gpt2ParamInfo *p, const char *column)
{
	if (column == NULL || strcmp(column, "data") == 0)
		return psprintf("parameter \"%s\"", p->name);
	return psprintf("%s of parameter \"%s\"", column, p->name);
}

/* Error unless tensor header `t` has the parameter's dtype and shape. */
static void
check_param_shape(const char *model, const Gpt2ParamInfo *p, const char *column,
				  const Tensor *t)
{
	bool		same_shape = t->dtype == LLM_DTYPE_FLOAT32 && t->ndim == p->ndim;

	for (int i = 0; same_shape && i < p->ndim; i++)
		same_shape = t->dims[i] == p->dims[i];
	if (!same_shape)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("model \"%s\": %s has shape %s, expected %s",
						model, param_label(p, column), tensor_shape_str(t),
						shape_str(p->ndim, p->dims))));
}

/*
 * True when `raw` is stored out of line, uncompressed: the usual case for a
 * big tensor (the type's STORAGE is EXTERNAL).  Then any byte range of it
 * can be read from its TOAST chunks alone (PG_DETOAST_DATUM_SLICE).
 */
static bool
is_sliceable(Datum raw)
{
	struct varlena *ptr = (struct varlena *) DatumGetPointer(raw);
	struct varatt_external toast_pointer;

	if (!VARATT_IS_EXTERNAL_ONDISK(ptr))
		return false;
	VARATT_EXTERNAL_GET_POINTER(toast_pointer, ptr);
	/* VARATT_EXTERNAL_IS_COMPRESSED(), without its signed/unsigned comparison */
	return VARATT_EXTERNAL_GET_EXTSIZE(toast_pointer) ==
		(uint32) (toast_pointer.va_rawsize - VARHDRSZ);
}

/*
 * Copy one llm_param value into dst, after checking its shape.
 *
 * Detoasting a value makes a palloc'd copy of all of it.  For the biggest
 * tensor (wte, 150 MB in GPT-2 small) that copy would sit next to the arena
 * for a moment, so out-of-line values are read in slices of LOAD_SLICE_BYTES
 * instead: peak memory stays the arena plus one slice.
 */
#define LOAD_SLICE_BYTES (8 << 20)

void
gpt2_param_read(const char *model, const Gpt2ParamInfo *p, const char *column,
				Datum raw, float *dst_floats)
{
	int64		nbytes = p->numel * (int64) sizeof(float);
	char	   *dst = (char *) dst_floats;

	if (is_sliceable(raw))
	{
		/* the header: ndim, dtype, dims (the varlena length word excluded) */
		Tensor	   *head = (Tensor *) PG_DETOAST_DATUM_SLICE(raw, 0, TENSOR_HDRSZ - VARHDRSZ);

		check_param_shape(model, p, column, head);
		pfree(head);
		for (int64 off = 0; off < nbytes; off += LOAD_SLICE_BYTES)
		{
			int64		len = Min(LOAD_SLICE_BYTES, nbytes - off);
			struct varlena *part = PG_DETOAST_DATUM_SLICE(raw, TENSOR_HDRSZ - VARHDRSZ + off, len);

			CHECK_FOR_INTERRUPTS();
			if (VARSIZE(part) - VARHDRSZ != len)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("model \"%s\": %s is shorter than its shape says",
								model, param_label(p, column))));
			memcpy(dst + off, VARDATA(part), len);
			pfree(part);
		}
	}
	else
	{
		/* inline (small) or compressed: detoast the whole value */
		Tensor	   *t = DatumGetTensorP(raw);

		check_param_shape(model, p, column, t);
		if (VARSIZE(t) != TENSOR_HDRSZ + nbytes)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("model \"%s\": %s has a size that does not match its shape",
							model, param_label(p, column))));
		memcpy(dst, t->data, nbytes);
		if ((Pointer) t != DatumGetPointer(raw))
			pfree(t);
	}
}

/* The parameter named `name`, or NULL. */
static const Gpt2ParamInfo *
find_param(const Gpt2ParamInfo *params, int n_params, const char *name)
{
	for (int i = 0; i < n_params; i++)
		if (strcmp(params[i].name, name) == 0)
			return &params[i];
	return NULL;
}

/* Read every llm_param row of the model into the arena, laid out as `params`. */
static void
load_parameters(const char *model, const Gpt2ParamInfo *params, int n_params, float *arena)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(model);
	bool	   *loaded = palloc0(sizeof(bool) * n_params);
	StringInfoData missing;
	int			n_missing = 0;
	int			ret;

	/*
	 * The result rows hold TOAST pointers, not the data: the tensors are
	 * only read when gpt2_param_read() detoasts them, one at a time.
	 */
	ret = SPI_execute_with_args(psprintf("SELECT name, data FROM %s WHERE model = $1",
										 llm_table_name("llm_param")),
								1, &argtype, &arg, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_param failed: %s", SPI_result_code_string(ret));

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		const Gpt2ParamInfo *p = find_param(params, n_params, name);
		bool		isnull;
		Datum		raw = SPI_getbinval(tup, desc, 2, &isnull);

		CHECK_FOR_INTERRUPTS();
		if (p == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("model \"%s\" has an unexpected parameter \"%s\"", model, name),
					 errhint("SELECT * FROM llm_param_shapes(model) lists the names GPT-2 has.")));
		if (!isnull)
		{
			gpt2_param_read(model, p, "data", raw, arena + p->offset);
			loaded[p - params] = true;
		}
		pfree(name);
	}

	/* Name the missing ones, like llm_check_complete() does. */
	initStringInfo(&missing);
	for (int i = 0; i < n_params; i++)
	{
		if (loaded[i])
			continue;
		if (n_missing < 5)
			appendStringInfo(&missing, "%s%s", n_missing ? ", " : "", params[i].name);
		n_missing++;
	}
	if (n_missing > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("model \"%s\" is missing %d parameter(s): %s%s",
						model, n_missing, missing.data, n_missing > 5 ? ", ..." : ""),
				 errhint("Import weights, or run SELECT llm_init('%s', seed) for a fresh model.",
						 model)));
	pfree(loaded);
}

/*
 * Decode a model into a new memory context, a child of `parent`.  Should an
 * error (or a cancel) interrupt us, that context goes away with its parent
 * when the transaction aborts: a half-loaded model can never leak or be
 * served.
 */
static Gpt2Model *
load_model(MemoryContext parent, const char *model, Oid relid, int64 version,
		   const Gpt2Config *cfg)
{
	MemoryContext mcxt = AllocSetContextCreate(parent, "pg_llm model cache",
											   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	Gpt2Model  *m = palloc0(sizeof(Gpt2Model));
	Gpt2ParamInfo *params;
	int			n_params;
	char	   *raw_arena;
	float	   *arena;

	m->mcxt = mcxt;
	m->name = pstrdup(model);
	m->config_relid = relid;
	m->version = version;
	m->cfg = *cfg;
	params = gpt2_param_layout(model, cfg, &n_params, &m->n_floats);

	/* One allocation for all the weights, its start aligned to 64 bytes. */
	raw_arena = llm_alloc_huge(m->n_floats * sizeof(float) + 64,
							   psprintf("the weights of model \"%s\"", model));
	arena = (float *) TYPEALIGN(64, raw_arena);
	gpt2_model_bind(m, arena);
	MemoryContextSwitchTo(old);

	/* Detoasted copies are made in `old` (SPI's context) and freed one by one. */
	load_parameters(model, params, n_params, arena);
	return m;
}

/* ---- the cache --------------------------------------------------------- */

static Gpt2Model *cached_model = NULL;
static int64 cache_loads = 0;	/* how many times a model was decoded */

static void
drop_cached_model(void)
{
	Gpt2Model  *m = cached_model;

	cached_model = NULL;		/* first, so that no error can leave it dangling */
	if (m != NULL)
		MemoryContextDelete(m->mcxt);
}

/*
 * ERROR 42501, as the query in load_parameters() would raise it, unless the
 * current user may SELECT the columns it reads (the whole table or each
 * column).
 */
static void
check_select_privilege(Oid param_relid)
{
	static const char *const columns[] = {"model", "name", "data"};
	Oid			user = GetUserId();

	if (pg_class_aclcheck(param_relid, user, ACL_SELECT) == ACLCHECK_OK)
		return;
	for (size_t i = 0; i < lengthof(columns); i++)
	{
		AttrNumber	attnum = get_attnum(param_relid, columns[i]);

		if (attnum == InvalidAttrNumber ||
			pg_attribute_aclcheck(param_relid, attnum, user, ACL_SELECT) != ACLCHECK_OK)
			aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, get_rel_name(param_relid));
	}
}

/*
 * The weights of `model`, from the cache when its version is unchanged.
 *
 * Why checking the version is enough (MVCC): the version is read through the
 * calling statement's snapshot, the same snapshot the parameters would be
 * read through.  If another session has changed the weights but not
 * committed, we see the old version and the old weights -- both correct for
 * us.  If it has committed, our snapshot (if taken later) sees the new
 * version and we reload.  Our own transaction's writes are visible to us,
 * version included.  A rollback restores the old version number, and since
 * the numbers come from a sequence (never handed out twice), a version we
 * cached always names the weights we cached for it.
 *
 * The key also holds the OID of llm_model_config: after DROP EXTENSION and
 * CREATE EXTENSION the sequence starts over, but the table is a new one.
 *
 * Under row-level security the weights are loaded for this call only (into
 * the caller's memory context, freed with it): what a role's policies let
 * it see is not what the cache holds for everyone.
 */
const Gpt2Model *
gpt2_model_get(const char *model)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			relid;
	Oid			param_relid;
	int64		version;
	Gpt2Config	cfg;
	Gpt2Model  *m;
	bool		shared;

	SPI_connect();
	if (!gpt2_config_read(model, &relid, &version, &cfg))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown model \"%s\"", model),
				 errhint("Models are registered in llm_model_config.")));
	param_relid = llm_table_oid("llm_param");
	check_select_privilege(param_relid);
	shared = check_enable_rls(param_relid, InvalidOid, false) != RLS_ENABLED;

	m = cached_model;
	if (shared && m != NULL && m->config_relid == relid && m->version == version &&
		strcmp(m->name, model) == 0)
	{
		SPI_finish();
		return m;
	}

	/* Free the old weights before decoding new ones: peak memory is one model. */
	gpt2_config_check(model, &cfg);
	drop_cached_model();
	m = load_model(caller, model, relid, version, &cfg);
	SPI_finish();
	cache_loads++;

	/* Loaded completely: now it may outlive this call and this transaction. */
	if (shared)
	{
		MemoryContextSetParent(m->mcxt, TopMemoryContext);
		cached_model = m;
	}
	return m;
}

const Gpt2Model *
gpt2_model_cached(const char *model, int64 version)
{
	Gpt2Model  *m = cached_model;

	if (m != NULL && m->version == version && strcmp(m->name, model) == 0)
		return m;
	return NULL;
}

void
gpt2_check_tokens(const char *who, const Gpt2Model *m, const int32 *ids, int n)
{
	check_token_ids(who, "token id", ids, n, m->cfg.vocab_size, false,
					psprintf(" of model \"%s\"", m->name));
}

/* ---- SQL: the cache ----------------------------------------------------- */

/* llm_model_cache(): which model this backend holds, and how often it loaded. */
PG_FUNCTION_INFO_V1(llm_model_cache_sql);
Datum
llm_model_cache_sql(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	Gpt2Model  *m = cached_model;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "llm_model_cache: return type must be a row type");
	desc = BlessTupleDesc(desc);
	if (m != NULL)
	{
		values[0] = CStringGetTextDatum(m->name);
		values[1] = Int64GetDatum(m->version);
		values[2] = Int64GetDatum(m->n_floats * (int64) sizeof(float));
	}
	else
		nulls[0] = nulls[1] = nulls[2] = true;
	values[3] = Int64GetDatum(cache_loads);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/* llm_model_cache_clear(): give the cached weights' memory back now. */
PG_FUNCTION_INFO_V1(llm_model_cache_clear_sql);
Datum
llm_model_cache_clear_sql(PG_FUNCTION_ARGS)
{
	drop_cached_model();
	PG_RETURN_VOID();
}
