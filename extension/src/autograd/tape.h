/*
 * tape.h -- the autograd tape of pg_llm: what the ops of this session
 * computed, node by node, so that llm_backprop() can run their backward.
 *
 * Recording is switched by the GUC pg_llm.autograd_mode (the SQL setter
 * llm_autograd_mode(mode) sets it):
 *   off   ops record nothing: one test of an int they already have loaded
 *   meta  each op records (op, inputs, output, shape, attributes)
 *   full  also the values of every tensor, so llm_backprop() can run
 *
 * The tape lives in this backend's memory (tape.c) and is copied into the
 * tables llm_tape and llm_tensor_rt at the end of each statement that
 * recorded something (tape_store.c), so any session can query it.
 *
 * A recording op calls, when autograd_recording():
 *   inputs[i] = tape_tensor(t);             (the node whose value t is)
 *   tape_record(TAPE_OP_..., inputs, n, &attrs, y->data, ndim, dims);
 */
#ifndef PG_LLM_AUTOGRAD_TAPE_H
#define PG_LLM_AUTOGRAD_TAPE_H

#include "postgres.h"

#include "access/parallel.h"

#include "autograd/op_list.h"
#include "tensor/tensor.h"

typedef enum AutogradMode
{
	AUTOGRAD_OFF,
	AUTOGRAD_META,
	AUTOGRAD_FULL
} AutogradMode;

/* pg_llm.autograd_mode: read directly, the only cost of recording when off. */
extern int	autograd_mode;

/* A parallel worker's tape would die with it: workers never record. */
static inline bool
autograd_recording(void)
{
	return autograd_mode != AUTOGRAD_OFF && !IsParallelWorker();
}

/* The ops the tape knows (op_list.h), in the order of the op table. */
#define TAPE_OP_KIND(KIND, name, arity, sql_arguments) TAPE_OP_##KIND,
typedef enum TapeOpKind
{
	TAPE_OPS(TAPE_OP_KIND)
	TAPE_OP_COUNT
} TapeOpKind;
#undef TAPE_OP_KIND

#define TAPE_MAX_INPUTS 3

/*
 * The non-tensor arguments of an op: flags and sizes in i[] (transposes,
 * causal, n_head, slice bounds), a real in f (scale factor, eps), token ids
 * in ids (embedding ids, cross-entropy targets; copied by tape_record).
 */
typedef struct TapeAttrs
{
	int64		i[2];
	double		f;
	const int32 *ids;
	int			n_ids;
} TapeAttrs;

/* A tensor of the tape: one row of llm_tensor_rt. */
typedef struct TapeTensor
{
	int			ndim;
	int64		dims[LLM_MAX_NDIM];
	int64		numel;
	float	   *data;			/* values (mode full), else NULL */
	float	   *grad;			/* after llm_backprop, else NULL */
	char	   *param_name;		/* a leaf that is a parameter, else NULL */
	int32		produced_by;	/* id of the op that made it; 0 for a leaf */
} TapeTensor;

/* One recorded op: one row of llm_tape. */
typedef struct TapeOp
{
	TapeOpKind	kind;
	int			n_inputs;
	int32		inputs[TAPE_MAX_INPUTS];
	int32		output;
	int64		i[2];
	double		f;
	int32	   *ids;
	int			n_ids;
} TapeOp;

/* The tape of this backend; ids are 1-based indexes into the arrays. */
typedef struct Tape
{
	MemoryContext mcxt;
	TapeTensor *tensors;		/* [n_tensors + 1], entry 0 unused */
	int32		n_tensors;
	TapeOp	   *ops;			/* [n_ops + 1], entry 0 unused */
	int32		n_ops;
	/* how much of it the tables hold (tape_store.c) */
	int32		stored_tensors;
	int32		stored_ops;
	bool		grads_dirty;	/* gradients changed since the last store */
	bool		tables_stale;	/* the tables hold rows this tape does not */
} Tape;

extern Tape *tape_get(void);

/*
 * The id of the node whose value `t` is: the most recent tensor of the tape
 * with the same shape and bytes, or else a new leaf holding t.
 */
extern int32 tape_tensor(const Tensor *t);

/* A new leaf from raw values; param_name may be NULL. Never matched by value
 * unless `findable`. */
extern int32 tape_leaf(const float *data, int ndim, const int64 *dims,
					   const char *param_name, bool findable);

/* Record one op; returns the id of its output, a new tensor. */
extern int32 tape_record(TapeOpKind kind, const int32 *inputs, int n_inputs,
						 const TapeAttrs *attrs, const float *out, int ndim,
						 const int64 *dims, bool findable);

/* What the SQL ops call: tape_tensor() of each input, then tape_record(). */
extern int32 tape_record_tensors(TapeOpKind kind, Tensor **inputs, int n_inputs,
								 const TapeAttrs *attrs, const float *out, int ndim,
								 const int64 *dims);
extern int32 tape_record_op(TapeOpKind kind, Tensor **inputs, int n_inputs,
							const TapeAttrs *attrs, const Tensor *y);

/* Forget the whole tape (the tables are emptied at the next store). */
extern void tape_reset(void);

/* ---- tape_store.c: the tape as the tables llm_tape and llm_tensor_rt ---- */

/* Write what the tables lack (and changed gradients) now, through SPI. */
extern void tape_store(void);
extern void tape_store_init(void);

/* ---- the ops: each one's methods, and the op table --------------------- */

/*
 * What the tape needs of an op beyond its name and arity: defined as
 * tape_<name> beside the op's SQL function in ops/ops.c, one per line of
 * op_list.h.  The backward gets the op, its input tensors (values recorded
 * in mode full), its output tensor, the input gradients to add to (din[i],
 * any may be NULL: not wanted) and the output's gradient.
 */
typedef struct TapeOpMethods
{
	/* its other arguments as jsonb text, e.g. {"transpose_a": false}; NULL: {} */
	char	   *(*attrs_json) (const TapeOp *op);
	/* accumulate the gradients of the inputs from the output's gradient */
	void		(*backward) (const TapeOp *op, TapeTensor **in, const TapeTensor *out,
							 float **din, const float *dout);
} TapeOpMethods;

#define TAPE_OP_METHODS(KIND, name, arity, sql_arguments) extern const TapeOpMethods tape_##name;
TAPE_OPS(TAPE_OP_METHODS)
#undef TAPE_OP_METHODS

/* op_table.c: the table, indexed by TapeOpKind */
typedef struct TapeOpInfo
{
	const char *name;			/* the SQL function, e.g. llm_matmul */
	int			arity;			/* tensor inputs */
	const TapeOpMethods *methods;
} TapeOpInfo;

extern const TapeOpInfo tape_ops[TAPE_OP_COUNT];

extern void autograd_init(void);

#endif							/* PG_LLM_AUTOGRAD_TAPE_H */
