/*
 * tape.c -- the autograd tape in this backend's memory: the tensors and
 * ops recorded while pg_llm.autograd_mode is meta or full.
 *
 * Identity.  Tensors are values: an op receives a copy of its inputs, not a
 * reference to the tensor an earlier op returned.  So an input is matched
 * to the tape by value: a 64-bit hash of its shape and bytes maps to the
 * tensor that last had them (most recent wins).  Consequences, documented
 * in llm_tensor_rt's comment: two tensors with equal shape and bytes are
 * one node (the latest); an input seen for the first time becomes a leaf
 * (what the learner typed, or a row of llm_param); a hash collision is
 * caught in mode full (the bytes are compared) and not in mode meta (two
 * different tensors of the same shape with the same 64-bit hash).
 */
#include "postgres.h"

#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "autograd/tape.h"

int			autograd_mode = AUTOGRAD_OFF;

static const struct config_enum_entry autograd_mode_options[] = {
	{"off", AUTOGRAD_OFF, false},
	{"meta", AUTOGRAD_META, false},
	{"full", AUTOGRAD_FULL, false},
	{NULL, 0, false}
};

typedef struct TapeHashEntry
{
	uint64		key;
	int32		id;
} TapeHashEntry;

static Tape tape;
static HTAB *by_value;
static int32 tensors_capacity;
static int32 ops_capacity;

/* Room for entry `id` of an array of `size`-byte entries (entry 0 unused). */
static void *
grow(void *array, int32 *capacity, int32 id, Size size)
{
	if (id < *capacity)
		return array;
	*capacity *= 2;
	return repalloc_huge(array, *capacity * size);
}

void
autograd_init(void)
{
	DefineCustomEnumVariable("pg_llm.autograd_mode",
							 "What the tensor ops record on the autograd tape: off, meta or full.",
							 "meta records each op and the shapes; full also the values, "
							 "which llm_backprop() needs. Set it with llm_autograd_mode(mode).",
							 &autograd_mode, AUTOGRAD_OFF, autograd_mode_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	tape_store_init();
}

static void
tape_init(void)
{
	HASHCTL		ctl;

	if (tape.mcxt == NULL)
		tape.mcxt = AllocSetContextCreate(TopMemoryContext, "pg_llm autograd tape",
										  ALLOCSET_DEFAULT_SIZES);
	tensors_capacity = ops_capacity = 64;
	tape.tensors = MemoryContextAllocZero(tape.mcxt, tensors_capacity * sizeof(TapeTensor));
	tape.ops = MemoryContextAllocZero(tape.mcxt, ops_capacity * sizeof(TapeOp));
	tape.n_tensors = 0;
	tape.n_ops = 0;
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(TapeHashEntry);
	ctl.hcxt = tape.mcxt;
	by_value = hash_create("pg_llm autograd tape by value", 256, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

Tape *
tape_get(void)
{
	if (tape.mcxt == NULL)
		tape_init();
	return &tape;
}

void
tape_reset(void)
{
	bool		had_rows = tape.stored_tensors > 0 || tape.stored_ops > 0 || tape.tables_stale;

	if (tape.mcxt != NULL)
		MemoryContextReset(tape.mcxt);
	tape_init();
	tape.stored_tensors = 0;
	tape.stored_ops = 0;
	tape.grads_dirty = false;
	tape.tables_stale = had_rows;
}

/* ---- identity by value ---------------------------------------------------- */

static inline uint64
mix(uint64 h, uint64 v)
{
	h ^= v;
	h *= UINT64CONST(0x9E3779B97F4A7C15);
	return h ^ (h >> 29);
}

static uint64
value_hash(const float *data, int ndim, const int64 *dims, int64 numel)
{
	uint64		h = mix(UINT64CONST(0x2545F4914F6CDD1D), ndim);
	const char *p = (const char *) data;
	int64		bytes = numel * (int64) sizeof(float);
	int64		i;

	for (int d = 0; d < ndim; d++)
		h = mix(h, dims[d]);
	for (i = 0; i + 8 <= bytes; i += 8)
	{
		uint64		w;

		memcpy(&w, p + i, 8);
		h = mix(h, w);
	}
	if (i < bytes)
	{
		uint32		w;

		memcpy(&w, p + i, 4);
		h = mix(h, w);
	}
	return h;
}

static bool
same_value(const TapeTensor *node, const float *data, int ndim, const int64 *dims)
{
	if (node->ndim != ndim || memcmp(node->dims, dims, ndim * sizeof(int64)) != 0)
		return false;
	/* Mode full keeps values: compare them, so a collision is no match. */
	return node->data == NULL || memcmp(node->data, data, node->numel * sizeof(float)) == 0;
}

/* ---- appending ------------------------------------------------------------ */

static int32
new_tensor(const float *data, int ndim, const int64 *dims, int32 produced_by, bool findable)
{
	TapeTensor *node;
	int32		id;

	tape_get();
	tape.tensors = grow(tape.tensors, &tensors_capacity, tape.n_tensors + 1, sizeof(TapeTensor));
	id = ++tape.n_tensors;
	node = &tape.tensors[id];
	memset(node, 0, sizeof(TapeTensor));
	node->ndim = ndim;
	node->numel = 1;
	for (int d = 0; d < ndim; d++)
	{
		node->dims[d] = dims[d];
		node->numel *= dims[d];
	}
	node->produced_by = produced_by;
	if (autograd_mode == AUTOGRAD_FULL)
	{
		node->data = MemoryContextAllocHuge(tape.mcxt, node->numel * sizeof(float));
		memcpy(node->data, data, node->numel * sizeof(float));
	}
	if (findable)
	{
		uint64		key = value_hash(data, ndim, dims, node->numel);
		TapeHashEntry *e = hash_search(by_value, &key, HASH_ENTER, NULL);

		e->id = id;
	}
	return id;
}

int32
tape_tensor(const Tensor *t)
{
	int64		dims[LLM_MAX_NDIM];
	uint64		key;
	TapeHashEntry *e;

	for (int d = 0; d < t->ndim; d++)
		dims[d] = t->dims[d];
	tape_get();
	key = value_hash(t->data, t->ndim, dims, tensor_numel(t));
	e = hash_search(by_value, &key, HASH_FIND, NULL);
	if (e != NULL && same_value(&tape.tensors[e->id], t->data, t->ndim, dims))
		return e->id;
	return new_tensor(t->data, t->ndim, dims, 0, true);
}

int32
tape_leaf(const float *data, int ndim, const int64 *dims, const char *param_name, bool findable)
{
	int32		id = new_tensor(data, ndim, dims, 0, findable);

	if (param_name != NULL)
		tape.tensors[id].param_name = MemoryContextStrdup(tape.mcxt, param_name);
	return id;
}

int32
tape_record(TapeOpKind kind, const int32 *inputs, int n_inputs, const TapeAttrs *attrs,
			const float *out, int ndim, const int64 *dims, bool findable)
{
	TapeOp	   *op;
	int32		op_id;

	Assert(n_inputs == tape_ops[kind].arity);
	tape_get();
	tape.ops = grow(tape.ops, &ops_capacity, tape.n_ops + 1, sizeof(TapeOp));
	op_id = ++tape.n_ops;
	op = &tape.ops[op_id];
	memset(op, 0, sizeof(TapeOp));
	op->kind = kind;
	op->n_inputs = n_inputs;
	memcpy(op->inputs, inputs, n_inputs * sizeof(int32));
	if (attrs != NULL)
	{
		op->i[0] = attrs->i[0];
		op->i[1] = attrs->i[1];
		op->f = attrs->f;
		if (attrs->n_ids > 0)
		{
			op->n_ids = attrs->n_ids;
			op->ids = MemoryContextAlloc(tape.mcxt, attrs->n_ids * sizeof(int32));
			memcpy(op->ids, attrs->ids, attrs->n_ids * sizeof(int32));
		}
	}
	op->output = new_tensor(out, ndim, dims, op_id, findable);
	return op->output;
}

int32
tape_record_tensors(TapeOpKind kind, Tensor **inputs, int n_inputs, const TapeAttrs *attrs,
					const float *out, int ndim, const int64 *dims)
{
	int32		ids[TAPE_MAX_INPUTS];

	for (int i = 0; i < n_inputs; i++)
		ids[i] = tape_tensor(inputs[i]);
	return tape_record(kind, ids, n_inputs, attrs, out, ndim, dims, true);
}

int32
tape_record_op(TapeOpKind kind, Tensor **inputs, int n_inputs, const TapeAttrs *attrs,
			   const Tensor *y)
{
	int64		dims[LLM_MAX_NDIM];

	for (int d = 0; d < y->ndim; d++)
		dims[d] = y->dims[d];
	return tape_record_tensors(kind, inputs, n_inputs, attrs, y->data, y->ndim, dims);
}
