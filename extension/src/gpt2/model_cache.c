/*
 * model_cache.c -- a model's decoded weights for the current call: read
 * from llm_param once per version and kept in the weight store
 * (weight_store.c: one copy per server on PostgreSQL 17+).
 *
 * A model's parameters are rows of llm_param, one `tensor` per HF name,
 * stored out of line (TOAST).  Reading and decoding 500 MB of them takes
 * about a second, far longer than generating a token, so we decode them
 * once into a single float array (the "arena") and keep it across calls,
 * keyed by llm_model_config.version.  Every write to llm_param -- an
 * import, an optimizer step, a learner's manual UPDATE -- and every change
 * to the model's row (n_head, layer_norm_eps, ...) bumps that version
 * through triggers (sql/30_model.sql), so a call that sees a version that
 * is cached may use the cache, and any other version is decoded anew.
 *
 * What a call may use is decided per call, by the caller's own reading of
 * llm_model_config: through its privileges and row-level security.  A role
 * that does not see the model's row gets "unknown model"; one that sees it
 * gets the weights of the version it sees, once it passes the SELECT check
 * on llm_param.  The row-level security policies on the two tables make
 * "sees the model's row" and "sees its llm_param rows" the same thing, so
 * the copy decoded by one role is the copy any role that sees the row
 * would decode.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "autograd/tape.h"
#include "gpt2/model_cache.h"
#include "gpt2/weight_store.h"
#include "pg_llm.h"
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

/* The model's row; *xmin is the transaction that wrote this version of it. */
static bool
config_row_read(const char *model, Oid *relid, int64 *version, Gpt2Config *cfg,
				TransactionId *xmin)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(model);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	int			ret;

	ret = SPI_execute_with_args(psprintf("SELECT tableoid, version, n_layer, n_head, n_embd, "
										 "n_positions, vocab_size, layer_norm_eps, xmin, n_inner "
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
	*xmin = DatumGetTransactionId(SPI_getbinval(tup, desc, 9, &isnull));
	cfg->n_inner = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
	if (isnull)
		cfg->n_inner = 4 * cfg->n_embd;
	return true;
}

bool
gpt2_config_read(const char *model, Oid *relid, int64 *version, Gpt2Config *cfg)
{
	TransactionId xmin;

	return config_row_read(model, relid, version, cfg, &xmin);
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

		tensor_check_format(head);
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

/*
 * One parameter into a bf16 arena (gpt2_model_bind_bf16's layout): a 2-D
 * tensor is read into a float buffer, then rounded to bf16, to nearest
 * even; a 1-D one is read as it is.
 */
static void
param_read_bf16(const char *model, const Gpt2ParamInfo *p, Datum raw, char *arena)
{
	char	   *dst = arena + p->offset_bf16;
	float	   *floats;
	llm_bf16   *out = (llm_bf16 *) dst;

	if (p->ndim == 1)
	{
		gpt2_param_read(model, p, "data", raw, (float *) dst);
		return;
	}
	floats = llm_alloc_huge(p->numel * sizeof(float), psprintf("parameter \"%s\"", p->name));
	gpt2_param_read(model, p, "data", raw, floats);
	for (int64 i = 0; i < p->numel; i++)
		out[i] = llm_float_to_bf16(floats[i]);
	pfree(floats);
}

/*
 * Read every llm_param row of the model into the arena, laid out as
 * `params` (floats), or as gpt2_model_bind_bf16 says (bf16).
 */
static void
load_parameters(const char *model, const Gpt2ParamInfo *params, int n_params, void *arena,
				bool bf16)
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
			if (bf16)
				param_read_bf16(model, p, raw, arena);
			else
				gpt2_param_read(model, p, "data", raw, (float *) arena + p->offset);
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

/* ---- the weights of a call ---------------------------------------------- */

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

/* A Gpt2Model over `arena` (floats, or bf16 as key->bf16 says), in the current memory context. */
static Gpt2Model *
model_view(const WeightKey *key, const Gpt2Config *cfg, void *arena)
{
	Gpt2Model  *m = palloc0(sizeof(Gpt2Model));

	m->name = pstrdup(key->model);
	m->config_relid = key->config_relid;
	m->version = key->version;
	m->cfg = *cfg;
	if (key->bf16)
		gpt2_model_bind_bf16(m, arena);
	else
		gpt2_model_bind(m, arena);
	return m;
}

/*
 * The weights of `model` for this call, from the weight store when the
 * version this call sees is there.
 *
 * Why the version is enough (MVCC): it is read through the calling
 * statement's snapshot, the same snapshot the parameters are read through.
 * If another session has changed the weights but not committed, we see the
 * old version and the old weights -- both correct for us.  Once it has
 * committed, a later snapshot sees the new version and we use (or decode)
 * that.  The numbers come from a sequence, never handed out twice (not even
 * after a rollback), so a cached version always names the weights cached
 * for it.  The key also holds the OID of llm_model_config: after DROP
 * EXTENSION and CREATE EXTENSION the sequence starts over, but the table is
 * a new one.
 *
 * A version written by our own transaction, not committed yet, is decoded
 * for this call only and never stored: only a committed version is
 * published, so other backends can never be handed weights that may still
 * roll back (they would not look for that version anyway: their snapshots
 * see the old one).
 */
const Gpt2Model *
gpt2_model_get(const char *model)
{
	MemoryContext caller = CurrentMemoryContext;
	WeightKey	key = {.model = model};
	WeightLookup found = WEIGHTS_NO_ROOM;
	WeightPin  *pin = NULL;
	TransactionId xmin;
	Gpt2Config	cfg;
	Gpt2ParamInfo *params;
	int			n_params;
	int64		n_floats;
	Size		bytes;
	void	   *arena;

	SPI_connect();
	if (!config_row_read(model, &key.config_relid, &key.version, &cfg, &xmin))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown model \"%s\"", model),
				 errhint("Models are registered in llm_model_config.")));
	check_select_privilege(llm_table_oid("llm_param"));
	gpt2_config_check(model, &cfg);
	params = gpt2_param_layout(model, &cfg, &n_params, &n_floats);

	/*
	 * pg_llm.inference_dtype = 'bf16': the bf16 copy, half the bytes.  Not
	 * while recording for autograd: the tape's gradients are those of the
	 * float parameters.
	 */
	key.bf16 = llm_inference_dtype == LLM_INFERENCE_BF16 && !autograd_recording();
	bytes = key.bf16 ? (Size) gpt2_bf16_arena_bytes(params, n_params) : n_floats * sizeof(float);

	if (!TransactionIdIsCurrentTransactionId(xmin))
		found = weight_store_acquire(&key, bytes, caller, &pin);
	if (found == WEIGHTS_NO_ROOM)
	{
		/* ours alone, in the caller's memory: freed with it, even half-decoded */
		MemoryContext spi = MemoryContextSwitchTo(caller);

		arena = (void *) TYPEALIGN(64, llm_alloc_huge(bytes + 64,
													  psprintf("the weights of model \"%s\"", model)));
		MemoryContextSwitchTo(spi);
	}
	else
		arena = pin->arena;

	/* Detoasted copies are made in SPI's context and freed one by one. */
	if (found != WEIGHTS_FOUND)
		load_parameters(model, params, n_params, arena, key.bf16);
	if (found == WEIGHTS_TO_DECODE)
		weight_store_publish(pin);
	SPI_finish();
	return model_view(&key, &cfg, arena);
}

void
gpt2_check_tokens(const char *who, const Gpt2Model *m, const int32 *ids, int n)
{
	check_token_ids(who, "token id", ids, n, m->cfg.vocab_size, false,
					psprintf(" of model \"%s\"", m->name));
}

/* ---- SQL: the cache ----------------------------------------------------- */

/* Whether the current user sees `model` in llm_model_config (SPI connected). */
static bool
model_visible(const char *model, Oid config_relid)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(model);
	int			ret;

	if (config_relid != llm_table_oid("llm_model_config"))
		return false;
	ret = SPI_execute_with_args(psprintf("SELECT 1 FROM %s WHERE model = $1",
										 llm_table_name("llm_model_config")),
								1, &argtype, &arg, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_model_config failed: %s", SPI_result_code_string(ret));
	return SPI_processed > 0;
}

/* The cached versions of the models the current user may see (SPI connected). */
static WeightEntry *
visible_entries(int *n)
{
	int			n_all;
	WeightEntry *all = weight_store_list(&n_all);

	*n = 0;
	for (int i = 0; i < n_all; i++)
		if (model_visible(all[i].model, all[i].config_relid))
			all[(*n)++] = all[i];
	return all;
}

/*
 * llm_model_cache() -> SETOF (model, version, dtype, bytes, pins, loaded_by,
 * loaded_at, last_used): the decoded versions of the models the caller sees.
 */
PG_FUNCTION_INFO_V1(llm_model_cache_sql);
Datum
llm_model_cache_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WeightEntry *entries;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	entries = visible_entries(&n);
	for (int i = 0; i < n; i++)
	{
		Datum		values[8];
		bool		nulls[8] = {false, false, false, false, false, false, false, false};

		values[0] = CStringGetTextDatum(entries[i].model);
		values[1] = Int64GetDatum(entries[i].version);
		values[2] = CStringGetTextDatum(entries[i].bf16 ? "bf16" : "fp32");
		values[3] = Int64GetDatum(entries[i].bytes);
		values[4] = Int32GetDatum(entries[i].pins);
		values[5] = Int32GetDatum(entries[i].loaded_by);
		values[6] = TimestampTzGetDatum(entries[i].loaded_at);
		values[7] = TimestampTzGetDatum(entries[i].last_used);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
	return (Datum) 0;
}

/* llm_model_cache_clear(): free the cached versions no call uses, of the models the caller sees. */
PG_FUNCTION_INFO_V1(llm_model_cache_clear_sql);
Datum
llm_model_cache_clear_sql(PG_FUNCTION_ARGS)
{
	WeightEntry *entries;
	int			n;

	SPI_connect();
	entries = visible_entries(&n);
	for (int i = 0; i < n; i++)
	{
		WeightKey	key = {entries[i].config_relid, entries[i].model, entries[i].version,
		entries[i].bf16};

		weight_store_drop(&key);
	}
	SPI_finish();
	PG_RETURN_VOID();
}
