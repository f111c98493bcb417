/*
 * model.c -- GPT-2 inside the backend: the decoded-weight cache and the
 * forward pass.
 *
 * 1. The weight cache.
 *
 *    A model's parameters are rows of llm_param, one `tensor` per HF name,
 *    stored out of line (TOAST).  Reading and decoding 500 MB of them takes
 *    about a second, far longer than generating a token, so we decode them
 *    once into a single float array (the "arena") in backend memory and keep
 *    it across calls, keyed by llm_model_config.version.  Every write to
 *    llm_param -- an import, an optimizer step, a learner's manual UPDATE --
 *    bumps that version through triggers (sql/30_model.sql), so a call that
 *    sees the same version as the cache may use the cache, and any other
 *    version forces a reload.  One model is cached at a time.
 *
 * 2. The forward pass, exactly as HuggingFace's GPT2LMHeadModel computes it
 *    in eval mode (no dropout):
 *
 *      x = wte[token] + wpe[position]
 *      for each layer:
 *          h   = LayerNorm_1(x)
 *          qkv = h @ W_attn + b_attn          W_attn is [C, 3C] (Conv1D)
 *          a   = causal self-attention of q, k, v, n_head heads,
 *                softmax(q k^T / sqrt(C / n_head)) v
 *          x   = x + a @ W_proj + b_proj
 *          h   = LayerNorm_2(x)
 *          x   = x + gelu_tanh(h @ W_fc + b_fc) @ W_proj2 + b_proj2
 *      logits = LayerNorm_f(x) @ wte^T        (lm_head is tied to wte)
 *
 *    Keys and values of every position go to a KV cache, so that decoding
 *    the next token runs the network over that one token only, its query
 *    attending to all the cached keys.
 */
#include "postgres.h"

#include <math.h>

#include "access/detoast.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "kernels.h"
#include "model.h"
#include "tensor.h"

/* Arena offsets are rounded up to 16 floats: every tensor starts on 64 bytes. */
#define ARENA_ALIGN_FLOATS 16
/* A model bigger than this many floats (16 GB) is refused before allocating. */
#define MAX_MODEL_FLOATS ((double) (INT64CONST(1) << 32))

/* ---- memory ------------------------------------------------------------ */

/*
 * palloc that may exceed 1 GB (MCXT_ALLOC_HUGE) and that returns NULL instead
 * of raising a generic error when memory runs out (MCXT_ALLOC_NO_OOM), so
 * that we can say what we were allocating.
 */
void *
gpt2_alloc(Size bytes, const char *what)
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

/* ---- the parameter table: HF name -> place in the arena ---------------- */

/* One named tensor of the model and where it goes. */
typedef struct ParamSlot
{
	char	   *name;			/* HF name, e.g. "h.0.attn.c_attn.weight" */
	int			ndim;			/* 1 or 2 */
	int64		dims[2];
	int64		offset;			/* in floats, from the start of the arena */
	const float **dst;			/* the model's pointer to set */
	bool		loaded;
} ParamSlot;

typedef struct SlotList
{
	ParamSlot  *items;
	int			n;
	int64		n_floats;		/* arena size so far */
} SlotList;

static int64
slot_numel(const ParamSlot *s)
{
	return s->ndim == 1 ? s->dims[0] : s->dims[0] * s->dims[1];
}

/* Append a tensor of shape [d0] (d1 == 0) or [d0, d1]. */
static void
slot_add(SlotList *list, char *name, const float **dst, int64 d0, int64 d1)
{
	ParamSlot  *s = &list->items[list->n++];

	s->name = name;
	s->ndim = d1 == 0 ? 1 : 2;
	s->dims[0] = d0;
	s->dims[1] = d1;
	s->offset = list->n_floats;
	s->dst = dst;
	s->loaded = false;
	list->n_floats += TYPEALIGN(ARENA_ALIGN_FLOATS, slot_numel(s));
}

/*
 * Every parameter of the model, in llm_param_shapes() order, with the
 * shapes that function gives (Conv1D weights [in, out]).  The pointers to
 * set live in `m` (m->layers must be allocated).
 */
static SlotList
build_slots(Gpt2Model *m)
{
	const Gpt2Config *c = &m->cfg;
	int64		C = c->n_embd,
				F = c->n_inner;
	SlotList	list = {0};

	list.items = palloc(sizeof(ParamSlot) * (4 + 12 * (Size) c->n_layer));
	slot_add(&list, "wte.weight", &m->wte, c->vocab_size, C);
	slot_add(&list, "wpe.weight", &m->wpe, c->n_positions, C);
	for (int l = 0; l < c->n_layer; l++)
	{
		Gpt2Layer  *L = &m->layers[l];

		slot_add(&list, psprintf("h.%d.ln_1.weight", l), &L->ln1_w, C, 0);
		slot_add(&list, psprintf("h.%d.ln_1.bias", l), &L->ln1_b, C, 0);
		slot_add(&list, psprintf("h.%d.attn.c_attn.weight", l), &L->attn_w, C, 3 * C);
		slot_add(&list, psprintf("h.%d.attn.c_attn.bias", l), &L->attn_b, 3 * C, 0);
		slot_add(&list, psprintf("h.%d.attn.c_proj.weight", l), &L->attn_proj_w, C, C);
		slot_add(&list, psprintf("h.%d.attn.c_proj.bias", l), &L->attn_proj_b, C, 0);
		slot_add(&list, psprintf("h.%d.ln_2.weight", l), &L->ln2_w, C, 0);
		slot_add(&list, psprintf("h.%d.ln_2.bias", l), &L->ln2_b, C, 0);
		slot_add(&list, psprintf("h.%d.mlp.c_fc.weight", l), &L->fc_w, C, F);
		slot_add(&list, psprintf("h.%d.mlp.c_fc.bias", l), &L->fc_b, F, 0);
		slot_add(&list, psprintf("h.%d.mlp.c_proj.weight", l), &L->mlp_proj_w, F, C);
		slot_add(&list, psprintf("h.%d.mlp.c_proj.bias", l), &L->mlp_proj_b, C, 0);
	}
	slot_add(&list, "ln_f.weight", &m->lnf_w, C, 0);
	slot_add(&list, "ln_f.bias", &m->lnf_b, C, 0);
	return list;
}

static ParamSlot *
find_slot(SlotList *list, const char *name)
{
	for (int i = 0; i < list->n; i++)
		if (strcmp(list->items[i].name, name) == 0)
			return &list->items[i];
	return NULL;
}

/* ---- reading the tables (SPI) ------------------------------------------ */

/*
 * Every query here runs with read_only = true.  For SPI that means: run in
 * the snapshot that is active for the calling SQL statement, do not take a
 * new one per query.  So the version read by read_config() and the
 * parameters read by load_parameters() come from the *same* snapshot, and
 * the weights we cache are exactly the weights of the version we label
 * them with -- even if another session commits new weights in between.
 */

/* The config row of `model`; false if there is none. */
static bool
read_config(const char *model, Oid *relid, int64 *version, Gpt2Config *cfg)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(model);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	int			ret;

	ret = SPI_execute_with_args("SELECT tableoid, version, n_layer, n_head, n_embd, "
								"n_positions, vocab_size, layer_norm_eps, n_inner "
								"FROM llm_model_config WHERE model = $1",
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
static void
check_config(const char *model, const Gpt2Config *c)
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

/* Error unless tensor header `t` has the slot's dtype and shape. */
static void
check_param_shape(const char *model, const ParamSlot *slot, const Tensor *t)
{
	bool		same_shape = t->dtype == LLM_DTYPE_FLOAT32 && t->ndim == slot->ndim;

	for (int i = 0; same_shape && i < slot->ndim; i++)
		same_shape = t->dims[i] == slot->dims[i];
	if (!same_shape)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("model \"%s\": parameter \"%s\" has shape %s, expected %s",
						model, slot->name, tensor_shape_str(t),
						shape_str(slot->ndim, slot->dims))));
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
	return !VARATT_EXTERNAL_IS_COMPRESSED(toast_pointer);
}

/*
 * Copy one llm_param value into its slot, after checking its shape.
 *
 * Detoasting a value makes a palloc'd copy of all of it.  For the biggest
 * tensor (wte, 150 MB in GPT-2 small) that copy would sit next to the arena
 * for a moment, so out-of-line values are read in slices of LOAD_SLICE_BYTES
 * instead: peak memory stays the arena plus one slice.
 */
#define LOAD_SLICE_BYTES (8 << 20)

static void
copy_parameter(const char *model, ParamSlot *slot, Datum raw, float *arena)
{
	int64		nbytes = slot_numel(slot) * (int64) sizeof(float);
	char	   *dst = (char *) (arena + slot->offset);

	if (is_sliceable(raw))
	{
		/* the header: ndim, dtype, dims (the varlena length word excluded) */
		Tensor	   *head = (Tensor *) PG_DETOAST_DATUM_SLICE(raw, 0, TENSOR_HDRSZ - VARHDRSZ);

		check_param_shape(model, slot, head);
		pfree(head);
		for (int64 off = 0; off < nbytes; off += LOAD_SLICE_BYTES)
		{
			int64		len = Min(LOAD_SLICE_BYTES, nbytes - off);
			struct varlena *part = PG_DETOAST_DATUM_SLICE(raw, TENSOR_HDRSZ - VARHDRSZ + off, len);

			CHECK_FOR_INTERRUPTS();
			if (VARSIZE(part) - VARHDRSZ != len)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("model \"%s\": parameter \"%s\" is shorter than its shape says",
								model, slot->name)));
			memcpy(dst + off, VARDATA(part), len);
			pfree(part);
		}
	}
	else
	{
		/* inline (small) or compressed: detoast the whole value */
		Tensor	   *t = DatumGetTensorP(raw);

		check_param_shape(model, slot, t);
		if (VARSIZE(t) != TENSOR_HDRSZ + nbytes)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("model \"%s\": parameter \"%s\" has a size that does not match its shape",
							model, slot->name)));
		memcpy(dst, t->data, nbytes);
		if ((Pointer) t != DatumGetPointer(raw))
			pfree(t);
	}
	slot->loaded = true;
}

/* Read every llm_param row of the model into the arena. */
static void
load_parameters(const char *model, SlotList *slots, float *arena)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(model);
	StringInfoData missing;
	int			n_missing = 0;
	int			ret;

	/*
	 * The result rows hold TOAST pointers, not the data: the tensors are
	 * only read when copy_parameter() detoasts them, one at a time.
	 */
	ret = SPI_execute_with_args("SELECT name, data FROM llm_param WHERE model = $1",
								1, &argtype, &arg, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_param failed: %s", SPI_result_code_string(ret));

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		ParamSlot  *slot = find_slot(slots, name);
		bool		isnull;
		Datum		raw = SPI_getbinval(tup, desc, 2, &isnull);

		CHECK_FOR_INTERRUPTS();
		if (slot == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("model \"%s\" has an unexpected parameter \"%s\"", model, name),
					 errhint("SELECT * FROM llm_param_shapes(model) lists the names GPT-2 has.")));
		if (!isnull)
			copy_parameter(model, slot, raw, arena);
		pfree(name);
	}

	/* Name the missing ones, like llm_check_complete() does. */
	initStringInfo(&missing);
	for (int i = 0; i < slots->n; i++)
	{
		if (slots->items[i].loaded)
			continue;
		if (n_missing < 5)
			appendStringInfo(&missing, "%s%s", n_missing ? ", " : "", slots->items[i].name);
		n_missing++;
	}
	if (n_missing > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("model \"%s\" is missing %d parameter(s): %s%s",
						model, n_missing, missing.data, n_missing > 5 ? ", ..." : ""),
				 errhint("Import weights, or run SELECT llm_init('%s', seed) for a fresh model.",
						 model)));
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
	SlotList	slots;
	char	   *raw_arena;
	float	   *arena;

	m->mcxt = mcxt;
	m->name = pstrdup(model);
	m->config_relid = relid;
	m->version = version;
	m->cfg = *cfg;
	m->layers = palloc0(sizeof(Gpt2Layer) * cfg->n_layer);
	slots = build_slots(m);
	m->n_floats = slots.n_floats;

	/* One allocation for all the weights, its start aligned to 64 bytes. */
	raw_arena = gpt2_alloc(m->n_floats * sizeof(float) + 64,
						   psprintf("the weights of model \"%s\"", model));
	arena = (float *) TYPEALIGN(64, raw_arena);
	for (int i = 0; i < slots.n; i++)
		*slots.items[i].dst = arena + slots.items[i].offset;
	MemoryContextSwitchTo(old);

	/* Detoasted copies are made in `old` (SPI's context) and freed one by one. */
	load_parameters(model, &slots, arena);
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
 */
const Gpt2Model *
gpt2_model_get(const char *model)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			relid;
	int64		version;
	Gpt2Config	cfg;
	Gpt2Model  *m;

	SPI_connect();
	if (!read_config(model, &relid, &version, &cfg))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown model \"%s\"", model),
				 errhint("Models are registered in llm_model_config.")));

	m = cached_model;
	if (m != NULL && m->config_relid == relid && m->version == version &&
		strcmp(m->name, model) == 0)
	{
		SPI_finish();
		return m;
	}

	/* Free the old weights before decoding new ones: peak memory is one model. */
	check_config(model, &cfg);
	drop_cached_model();
	m = load_model(caller, model, relid, version, &cfg);
	SPI_finish();

	/* Loaded completely: now it may outlive this call and this transaction. */
	MemoryContextSetParent(m->mcxt, TopMemoryContext);
	cached_model = m;
	cache_loads++;
	return m;
}

void
gpt2_check_tokens(const char *who, const Gpt2Model *m, const int32 *ids, int n)
{
	for (int i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: token id %d at position %d is outside the vocabulary 0..%d of model \"%s\"",
							who, ids[i], i + 1, m->cfg.vocab_size - 1, m->name)));
}

/* ---- the per-call state: KV cache and scratch --------------------------- */

Gpt2State *
gpt2_state_new(const Gpt2Model *m, int64 max_rows, int64 n_ctx)
{
	int64		C = m->cfg.n_embd,
				F = m->cfg.n_inner;
	MemoryContext mcxt = AllocSetContextCreate(CurrentMemoryContext, "pg_llm gpt2 state",
											   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	Gpt2State  *st = palloc0(sizeof(Gpt2State));

	if (max_rows < 1 || n_ctx < max_rows || n_ctx > m->cfg.n_positions)
		elog(ERROR, "gpt2_state_new: bad sizes max_rows " INT64_FORMAT ", n_ctx " INT64_FORMAT,
			 max_rows, n_ctx);
	st->mcxt = mcxt;
	st->model = m;
	st->max_rows = max_rows;
	st->n_ctx = n_ctx;

	/*
	 * Allocated once per call; the decode loop allocates nothing.  A single
	 * forward over all positions (n_ctx == max_rows: llm_logits, llm_loss)
	 * needs no KV cache: attention reads k and v from the qkv buffer.
	 */
	if (n_ctx > max_rows)
	{
		st->k_cache = palloc(sizeof(float *) * m->cfg.n_layer);
		st->v_cache = palloc(sizeof(float *) * m->cfg.n_layer);
		for (int l = 0; l < m->cfg.n_layer; l++)
		{
			st->k_cache[l] = gpt2_alloc(n_ctx * C * sizeof(float), "the KV cache");
			st->v_cache[l] = gpt2_alloc(n_ctx * C * sizeof(float), "the KV cache");
		}
	}
	st->x = gpt2_alloc(max_rows * C * sizeof(float), "activations");
	st->hidden = gpt2_alloc(max_rows * C * sizeof(float), "activations");
	st->qkv = gpt2_alloc(max_rows * 3 * C * sizeof(float), "activations");
	st->att = gpt2_alloc(max_rows * C * sizeof(float), "activations");
	st->proj = gpt2_alloc(max_rows * C * sizeof(float), "activations");
	st->fc = gpt2_alloc(max_rows * F * sizeof(float), "activations");
	MemoryContextSwitchTo(old);
	return st;
}

/* Report the timers (SET client_min_messages = debug1 to see them). */
static void
report_timers(const Gpt2State *st)
{
	static const char *const names[TIMER_COUNT] = {
		"embed", "layernorm", "qkv", "attention", "attn_proj",
		"mlp_fc", "gelu", "mlp_proj", "residual", "lm_head"
	};
	StringInfoData s;
	double		total = 0;

	if (!message_level_is_interesting(DEBUG1))
		return;
	initStringInfo(&s);
	for (int i = 0; i < TIMER_COUNT; i++)
	{
		appendStringInfo(&s, " %s %.2f", names[i], st->seconds[i] * 1000.0);
		total += st->seconds[i];
	}
	elog(DEBUG1, "pg_llm gpt2 \"%s\": %.2f ms over " INT64_FORMAT " positions;%s (ms)",
		 st->model->name, total * 1000.0, st->n_past, s.data);
	pfree(s.data);
}

void
gpt2_state_free(Gpt2State *st)
{
	report_timers(st);
	MemoryContextDelete(st->mcxt);
}

/* ---- the forward pass ---------------------------------------------------- */

static instr_time
timer_start(void)
{
	instr_time	t;

	INSTR_TIME_SET_CURRENT(t);
	return t;
}

static void
timer_stop(Gpt2State *st, Gpt2Timer which, instr_time start)
{
	instr_time	now;

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	st->seconds[which] += INSTR_TIME_GET_DOUBLE(now);
}

/* out[T, N] = in[T, K] @ w[K, N] + b[N]: a Conv1D layer (w stored [in, out]). */
static void
linear(Gpt2State *st, Gpt2Timer which, const float *in, const float *w, const float *b,
	   float *out, int64 T, int64 K, int64 N)
{
	instr_time	start = timer_start();

	llm_check_status(llm_matmul(in, w, b, out, T, K, N, 0, 0));
	timer_stop(st, which, start);
}

/* out[T, C] = LayerNorm(in[T, C]) * g + b, over each row. */
static void
layernorm(Gpt2State *st, const float *in, const float *g, const float *b, float *out, int64 T)
{
	instr_time	start = timer_start();

	llm_check_status(llm_layernorm(in, g, b, out, T, st->model->cfg.n_embd,
								   st->model->cfg.layer_norm_eps));
	timer_stop(st, TIMER_LAYERNORM, start);
}

/* x[T, C] += delta[T, C]: the residual connection. */
static void
residual_add(Gpt2State *st, const float *delta, int64 T)
{
	instr_time	start = timer_start();
	int64		n = T * st->model->cfg.n_embd;

	llm_add(st->x, delta, st->x, n, n);
	timer_stop(st, TIMER_RESIDUAL, start);
}

/* x[t] = wte[tokens[t]] + wpe[n_past + t] */
static void
embed(Gpt2State *st, const int32 *tokens, int64 T)
{
	const Gpt2Model *m = st->model;
	int64		C = m->cfg.n_embd;
	instr_time	start = timer_start();

	llm_embedding(m->wte, tokens, st->x, T, C);
	llm_add(st->x, m->wpe + st->n_past * C, st->x, T * C, T * C);
	timer_stop(st, TIMER_EMBED, start);
}

/*
 * x += c_proj(attention(c_attn(LayerNorm_1(x))))
 *
 * The fused qkv buffer is [T, 3C]: row t holds q_t, k_t, v_t side by side.
 * The queries are read in place (row stride 3C) and attend over all
 * n_past + T positions, query t seeing keys 0 .. n_past + t.  With a KV
 * cache, k_t and v_t are first appended to this layer's cache at position
 * n_past + t and read from there (row stride C); without one (a single
 * forward over the whole sequence) they are read in place too.
 */
static void
attention_block(Gpt2State *st, int layer, int64 T)
{
	const Gpt2Model *m = st->model;
	const Gpt2Layer *L = &m->layers[layer];
	int64		C = m->cfg.n_embd;
	int64		pos0 = st->n_past;
	const float *k = st->qkv + C,
			   *v = st->qkv + 2 * C;
	int64		ldkv = 3 * C;
	instr_time	start;

	layernorm(st, st->x, L->ln1_w, L->ln1_b, st->hidden, T);
	linear(st, TIMER_QKV, st->hidden, L->attn_w, L->attn_b, st->qkv, T, C, 3 * C);

	start = timer_start();
	if (st->k_cache != NULL)
	{
		float	   *k_cache = st->k_cache[layer];
		float	   *v_cache = st->v_cache[layer];

		for (int64 t = 0; t < T; t++)
		{
			const float *row = st->qkv + t * 3 * C;

			memcpy(k_cache + (pos0 + t) * C, row + C, C * sizeof(float));
			memcpy(v_cache + (pos0 + t) * C, row + 2 * C, C * sizeof(float));
		}
		k = k_cache;
		v = v_cache;
		ldkv = C;
	}
	llm_check_status(llm_attention(st->qkv, 3 * C, k, ldkv, v, ldkv, st->att,
								   T, pos0 + T, C, m->cfg.n_head, 1));
	timer_stop(st, TIMER_ATTENTION, start);

	linear(st, TIMER_ATTN_PROJ, st->att, L->attn_proj_w, L->attn_proj_b, st->proj, T, C, C);
	residual_add(st, st->proj, T);
}

/* x += c_proj(gelu(c_fc(LayerNorm_2(x)))) */
static void
mlp_block(Gpt2State *st, int layer, int64 T)
{
	const Gpt2Model *m = st->model;
	const Gpt2Layer *L = &m->layers[layer];
	int64		C = m->cfg.n_embd,
				F = m->cfg.n_inner;
	instr_time	start;

	layernorm(st, st->x, L->ln2_w, L->ln2_b, st->hidden, T);
	linear(st, TIMER_MLP_FC, st->hidden, L->fc_w, L->fc_b, st->fc, T, C, F);

	start = timer_start();
	llm_check_status(llm_gelu(st->fc, st->fc, T * F));	/* elementwise: in place */
	timer_stop(st, TIMER_GELU, start);

	linear(st, TIMER_MLP_PROJ, st->fc, L->mlp_proj_w, L->mlp_proj_b, st->proj, T, F, C);
	residual_add(st, st->proj, T);
}

void
gpt2_forward(Gpt2State *st, const int32 *tokens, int64 T)
{
	const Gpt2Model *m = st->model;

	/* Callers check these against the model; this is a last line of defence. */
	if (T < 1 || T > st->max_rows || st->n_past + T > st->n_ctx ||
		(st->k_cache == NULL && st->n_past > 0))
		elog(ERROR, "gpt2_forward: " INT64_FORMAT " tokens after " INT64_FORMAT
			 " do not fit (max_rows " INT64_FORMAT ", n_ctx " INT64_FORMAT ")",
			 T, st->n_past, st->max_rows, st->n_ctx);

	embed(st, tokens, T);
	for (int layer = 0; layer < m->cfg.n_layer; layer++)
	{
		CHECK_FOR_INTERRUPTS();
		attention_block(st, layer, T);
		mlp_block(st, layer, T);
	}
	layernorm(st, st->x, m->lnf_w, m->lnf_b, st->hidden, T);
	st->n_past += T;
	st->last_rows = T;
}

void
gpt2_logits(Gpt2State *st, int64 row, int64 nrows, float *out)
{
	const Gpt2Model *m = st->model;
	int64		C = m->cfg.n_embd;
	instr_time	start = timer_start();

	if (row < 0 || nrows < 1 || row + nrows > st->last_rows)
		elog(ERROR, "gpt2_logits: rows " INT64_FORMAT " .. " INT64_FORMAT " are not in the last forward",
			 row, row + nrows - 1);
	/* logits = hidden @ wte^T: wte is stored [V, C], hence transB. */
	llm_check_status(llm_matmul(st->hidden + row * C, m->wte, NULL, out,
								nrows, C, m->cfg.vocab_size, 0, 1));
	timer_stop(st, TIMER_LM_HEAD, start);
}

/* ---- SQL: llm_logits, llm_loss, the cache -------------------------------- */

/* Error unless 1 <= n <= n_positions and every id is in the vocabulary. */
static void
check_sequence(const char *who, const Gpt2Model *m, const int32 *ids, int n)
{
	if (n < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: the token array is empty", who)));
	if (n > m->cfg.n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: %d tokens are more than model \"%s\" takes (n_positions = %d)",
						who, n, m->name, m->cfg.n_positions)));
	gpt2_check_tokens(who, m, ids, n);
}

/*
 * llm_logits(model, tokens, last_only) -> tensor [T, V], or [1, V] with
 * last_only: the next-token logits after each prefix of `tokens`.
 */
PG_FUNCTION_INFO_V1(llm_logits_sql);
Datum
llm_logits_sql(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			T;
	int32	   *ids = int_array_values("llm_logits", PG_GETARG_ARRAYTYPE_P(1), &T);
	bool		last_only = PG_GETARG_BOOL(2);
	const Gpt2Model *m = gpt2_model_get(name);
	int64		rows = last_only ? 1 : T;
	int64		dims[2];
	Gpt2State  *st;
	Tensor	   *out;

	check_sequence("llm_logits", m, ids, T);
	dims[0] = rows;
	dims[1] = m->cfg.vocab_size;
	out = tensor_new(2, dims);

	st = gpt2_state_new(m, T, T);
	gpt2_forward(st, ids, T);
	gpt2_logits(st, T - rows, rows, out->data);
	gpt2_state_free(st);
	PG_RETURN_TENSOR_P(out);
}

/*
 * llm_loss(model, tokens, targets) -> mean cross-entropy of the logits at
 * row t against targets[t], over the t whose target is not -100.  The
 * targets are given explicitly, aligned with the tokens: for next-token
 * prediction pass targets = tokens[2:] || -100 (HF's labels=input_ids
 * shifts internally to the same thing).
 *
 * The lm_head runs over chunks of rows, so a [T, V] logits matrix never
 * exists at once.
 */
PG_FUNCTION_INFO_V1(llm_loss_sql);
Datum
llm_loss_sql(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			T,
				n_targets;
	int32	   *ids = int_array_values("llm_loss", PG_GETARG_ARRAYTYPE_P(1), &T);
	int32	   *targets = int_array_values("llm_loss", PG_GETARG_ARRAYTYPE_P(2), &n_targets);
	const Gpt2Model *m = gpt2_model_get(name);
	int64		V = m->cfg.vocab_size;
	int64		chunk = Max(1, Min(T, (32 << 20) / (V * (int64) sizeof(float))));
	int64		total_counted = 0;
	double		total_loss = 0;
	Gpt2State  *st;
	float	   *logits;

	check_sequence("llm_loss", m, ids, T);
	if (n_targets != T)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_loss: %d targets for %d tokens (one target per token)", n_targets, T)));
	for (int i = 0; i < T; i++)
	{
		if (targets[i] != -100 && (targets[i] < 0 || targets[i] >= V))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("llm_loss: target %d at position %d is outside the vocabulary 0..%d (or -100 to ignore)",
							targets[i], i + 1, (int) V - 1)));
		total_counted += targets[i] != -100;
	}
	if (total_counted == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_loss: every target is the ignore index -100")));

	st = gpt2_state_new(m, T, T);
	gpt2_forward(st, ids, T);
	logits = gpt2_alloc(chunk * V * sizeof(float), "logits");
	total_counted = 0;
	for (int64 r0 = 0; r0 < T; r0 += chunk)
	{
		int64		nrows = Min(chunk, T - r0);
		double		loss;
		int64		counted = 0;

		for (int64 i = r0; i < r0 + nrows; i++)
			counted += targets[i] != -100;
		if (counted == 0)
			continue;
		gpt2_logits(st, r0, nrows, logits);
		llm_check_status(llm_cross_entropy(logits, targets + r0, nrows, V, &loss, &counted));
		total_loss += loss * counted;	/* the chunk's mean, back to a sum */
		total_counted += counted;
	}
	pfree(logits);
	gpt2_state_free(st);
	PG_RETURN_FLOAT4((float4) (total_loss / total_counted));
}

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
