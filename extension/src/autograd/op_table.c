/*
 * op_table.c -- the ops the tape knows (op_list.h): for each, its SQL
 * name, how many tensors it takes, its attributes as jsonb for
 * llm_tape.attrs (<op>_attrs), and its backward (<op>_backward), which
 * accumulates the inputs' gradients from the output's through the kernels'
 * llm_<op>_backward (kernels.h).
 *
 * A backward gets the op, its input tensors (values recorded in mode
 * full), its output tensor, the input gradients to add to (din[i], any may
 * be NULL: not wanted) and the output's gradient.  What a kernel's backward
 * needs beyond that (LayerNorm's mean and rstd, the logsumexp of attention
 * or cross-entropy) is recomputed from the inputs: the tape stores values,
 * not a kernel's scratch.
 */
#include "postgres.h"

#include "lib/stringinfo.h"

#include "autograd/tape.h"
#include "kernels/kernels.h"
#include "support/support.h"

/* ---- attributes as jsonb text -------------------------------------------- */

static char *
no_attrs(const TapeOp *op)
{
	return "{}";
}

#define add_attrs no_attrs
#define mul_attrs no_attrs
#define transpose_attrs no_attrs
#define reshape_attrs no_attrs
#define gelu_attrs no_attrs

static const char *
json_bool(int64 v)
{
	return v ? "true" : "false";
}

static char *
ids_json(const char *key, const TapeOp *op)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfo(&s, "{\"%s\": [", key);
	for (int i = 0; i < op->n_ids; i++)
		appendStringInfo(&s, "%s%d", i ? ", " : "", op->ids[i]);
	appendStringInfoString(&s, "]}");
	return s.data;
}

static char *
matmul_attrs(const TapeOp *op)
{
	return psprintf("{\"transpose_a\": %s, \"transpose_b\": %s}",
					json_bool(op->i[0]), json_bool(op->i[1]));
}

static char *
scale_attrs(const TapeOp *op)
{
	return psprintf("{\"s\": %.9g}", op->f);
}

static char *
slice_attrs(const TapeOp *op)
{
	return psprintf("{\"start\": " INT64_FORMAT ", \"stop\": " INT64_FORMAT "}", op->i[0], op->i[1]);
}

static char *
softmax_attrs(const TapeOp *op)
{
	return psprintf("{\"causal\": %s}", json_bool(op->i[0]));
}

static char *
layernorm_attrs(const TapeOp *op)
{
	return psprintf("{\"eps\": %.9g}", op->f);
}

static char *
embedding_attrs(const TapeOp *op)
{
	return ids_json("ids", op);
}

static char *
cross_entropy_attrs(const TapeOp *op)
{
	return ids_json("targets", op);
}

static char *
attention_attrs(const TapeOp *op)
{
	return psprintf("{\"n_head\": " INT64_FORMAT ", \"causal\": %s}", op->i[0], json_bool(op->i[1]));
}

static char *
attention_qkv_attrs(const TapeOp *op)
{
	return psprintf("{\"n_head\": " INT64_FORMAT ", \"causal\": true, \"qkv\": \"fused [T, 3C]: q, k, v side by side\"}",
					op->i[0]);
}

/* ---- backward --------------------------------------------------------------- */

static int64
rows_of(const TapeTensor *t)
{
	return t->numel / t->dims[t->ndim - 1];
}

static void
matmul_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	bool		ta = op->i[0],
				tb = op->i[1];
	int64		M = out->dims[0],
				N = out->dims[1],
				K = ta ? in[0]->dims[0] : in[0]->dims[1];

	llm_check_status(llm_matmul_backward(dout, in[0]->data, in[1]->data, din[0], din[1], NULL,
										 M, K, N, ta, tb));
}

static void
add_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	llm_add_backward(dout, din[0], din[1], in[0]->numel, in[1]->numel);
}

static void
mul_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	llm_mul_backward(dout, in[0]->data, in[1]->data, din[0], din[1], in[0]->numel, in[1]->numel);
}

static void
scale_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	if (din[0])
		llm_scale_backward(dout, (float) op->f, din[0], in[0]->numel);
}

static void
transpose_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	if (din[0])
		llm_transpose_backward(dout, din[0], in[0]->dims[0], in[0]->dims[1]);
}

/* reshape: the same values in the same order, so dx += dy */
static void
reshape_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	llm_add_backward(dout, din[0], NULL, in[0]->numel, in[0]->numel);
}

/* slice: rows start .. stop-1, so those rows of dx += dy */
static void
slice_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	int64		row = in[0]->numel / in[0]->dims[0];

	if (din[0])
		llm_add_backward(dout, din[0] + op->i[0] * row, NULL, out->numel, out->numel);
}

static void
gelu_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	if (din[0])
		llm_check_status(llm_gelu_backward(in[0]->data, dout, din[0], in[0]->numel));
}

static void
softmax_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	int64		causal_rows = op->i[0] ? out->dims[out->ndim - 2] : 0;

	if (din[0])
		llm_check_status(llm_softmax_backward(out->data, dout, din[0], rows_of(out),
											  out->dims[out->ndim - 1], causal_rows));
}

static void
layernorm_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	int64		rows = rows_of(in[0]),
				cols = in[0]->dims[in[0]->ndim - 1];
	float	   *y = llm_alloc_floats(rows, cols, "LayerNorm's recomputed output");
	float	   *mean = llm_alloc_floats(rows, 1, "LayerNorm's mean");
	float	   *rstd = llm_alloc_floats(rows, 1, "LayerNorm's rstd");

	llm_check_status(llm_layernorm(in[0]->data, in[1]->data, in[2]->data, y, rows, cols,
								   (float) op->f, mean, rstd));
	llm_check_status(llm_layernorm_backward(in[0]->data, in[1]->data, mean, rstd, dout,
											din[0], din[1], din[2], rows, cols));
	pfree(y);
	pfree(mean);
	pfree(rstd);
}

static void
embedding_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	if (din[0])
		llm_embedding_backward(op->ids, dout, din[0], op->n_ids, in[0]->dims[1]);
}

/* The mean over counted rows: scale = dL/dloss / counted. */
static void
cross_entropy_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	int64		counted = 0;

	for (int i = 0; i < op->n_ids; i++)
		counted += op->ids[i] >= 0;
	if (din[0] && counted > 0)
		llm_check_status(llm_cross_entropy_backward(in[0]->data, op->ids, NULL, in[0]->dims[0],
													in[0]->dims[1], dout[0] / counted, din[0]));
}

/* The strided form both attention ops share; k, v, dk, dv at offsets of q. */
static void
attention_backward_strided(const float *q, const float *k, const float *v, int64 ld,
						   float *dq, float *dk, float *dv,
						   const float *dy, int64 Tq, int64 Tk, int64 C, int64 n_head, bool causal)
{
	float	   *y = llm_alloc_floats(Tq, C, "attention's recomputed output");
	float	   *lse = llm_alloc_floats(n_head, Tq, "attention's logsumexp");

	llm_check_status(llm_attention(q, ld, k, ld, v, ld, y, Tq, Tk, C, n_head, causal, lse));
	llm_check_status(llm_attention_backward(q, ld, k, ld, v, ld, y, lse, dy,
											dq, ld, dk, ld, dv, ld, Tq, Tk, C, n_head, causal));
	pfree(y);
	pfree(lse);
}

static void
attention_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	int64		C = in[0]->dims[1];

	attention_backward_strided(in[0]->data, in[1]->data, in[2]->data, C, din[0], din[1], din[2],
							   dout, in[0]->dims[0], in[1]->dims[0], C, op->i[0], op->i[1]);
}

static void
attention_qkv_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	int64		T = in[0]->dims[0],
				C = in[0]->dims[1] / 3;
	const float *qkv = in[0]->data;
	float	   *d = din[0];

	if (d)
		attention_backward_strided(qkv, qkv + C, qkv + 2 * C, 3 * C, d, d + C, d + 2 * C,
								   dout, T, T, C, op->i[0], true);
}

#define TAPE_OP_ROW(KIND, name, arity, sql_arguments) \
	[TAPE_OP_##KIND] = {"llm_" #name, arity, name##_attrs, name##_backward},
const TapeOpInfo tape_ops[TAPE_OP_COUNT] = {
	TAPE_OPS(TAPE_OP_ROW)
};
