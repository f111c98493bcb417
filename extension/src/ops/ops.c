/*
 * ops.c -- SQL functions over `tensor`: check arguments, then call a
 * kernel.  Every shape check happens here, before any kernel runs, so a bad
 * call is an ERROR that names the shapes and never a crash.  When
 * pg_llm.autograd_mode is not off, each op then records itself on the
 * autograd tape (autograd/tape.h).
 *
 * Beside each SQL function, its op's methods for the tape (one op per line
 * of autograd/op_list.h): tape_<op> = {its attributes as jsonb for
 * llm_tape.attrs, its backward}.  The backward adds the inputs' gradients
 * from the output's through the kernel's llm_<op>_backward (kernels.h); what
 * it needs beyond the op's inputs and output (LayerNorm's mean and rstd, the
 * logsumexp of attention or cross-entropy) is recomputed from the inputs:
 * the tape stores values, not a kernel's scratch.
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "common/int.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/array.h"

#include "autograd/tape.h"
#include "kernels/kernels.h"
#include "support/support.h"
#include "tensor/tensor.h"

/* ---- argument checks --------------------------------------------------- */

static void
require_ndim(const char *who, const char *what, const Tensor *t, int ndim)
{
	if (t->ndim != ndim)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s: %s must be a %d-D tensor, got shape %s",
						who, what, ndim, tensor_shape_str(t))));
}

static bool
same_shape(const Tensor *a, const Tensor *b)
{
	if (a->ndim != b->ndim)
		return false;
	for (int i = 0; i < a->ndim; i++)
		if (a->dims[i] != b->dims[i])
			return false;
	return true;
}

/*
 * b broadcasts over a when b's shape is a suffix of a's shape: a bias [C]
 * over activations [T, C], or the same shape.
 */
static void
require_broadcast(const char *who, const Tensor *a, const Tensor *b)
{
	bool		ok = b->ndim <= a->ndim;

	for (int i = 1; ok && i <= b->ndim; i++)
		ok = a->dims[a->ndim - i] == b->dims[b->ndim - i];
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s: shapes %s and %s do not broadcast",
						who, tensor_shape_str(a), tensor_shape_str(b)),
				 errhint("The second shape must equal the first, or its trailing dimensions (a bias row).")));
}

/* ---- for the tape ---------------------------------------------------------- */

static const char *
json_bool(int64 v)
{
	return v ? "true" : "false";
}

/* {"<key>": [the op's ids]} */
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

static int64
rows_of(const TapeTensor *t)
{
	return t->numel / t->dims[t->ndim - 1];
}

/* ---- matmul ------------------------------------------------------------ */

PG_FUNCTION_INFO_V1(llm_matmul_sql);
Datum
llm_matmul_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *a = PG_GETARG_TENSOR_P(0);
	Tensor	   *b = PG_GETARG_TENSOR_P(1);
	bool		ta = PG_GETARG_BOOL(2);
	bool		tb = PG_GETARG_BOOL(3);
	int64		M,
				K,
				Kb,
				N;
	int64		dims[2];
	Tensor	   *c;

	require_ndim("llm_matmul", "the first argument", a, 2);
	require_ndim("llm_matmul", "the second argument", b, 2);
	M = ta ? a->dims[1] : a->dims[0];
	K = ta ? a->dims[0] : a->dims[1];
	Kb = tb ? b->dims[1] : b->dims[0];
	N = tb ? b->dims[0] : b->dims[1];
	if (K != Kb)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_matmul: shapes %s%s and %s%s do not align",
						tensor_shape_str(a), ta ? "^T" : "",
						tensor_shape_str(b), tb ? "^T" : ""),
				 errdetail("The inner dimensions are " INT64_FORMAT " and " INT64_FORMAT ".", K, Kb)));
	dims[0] = M;
	dims[1] = N;
	c = tensor_new(2, dims);
	llm_check_status(llm_matmul(a->data, b->data, NULL, c->data, M, K, N, ta, tb));
	if (autograd_recording())
		tape_record_op(TAPE_OP_MATMUL, (Tensor *[]) {a, b}, 2, &(TapeAttrs) {.i = {ta, tb}}, c);
	PG_RETURN_TENSOR_P(c);
}

static char *
matmul_attrs(const TapeOp *op)
{
	return psprintf("{\"transpose_a\": %s, \"transpose_b\": %s}",
					json_bool(op->i[0]), json_bool(op->i[1]));
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

const TapeOpMethods tape_matmul = {matmul_attrs, matmul_backward};

/* ---- elementwise --------------------------------------------------------- */

typedef void (*binary_kernel) (const float *a, const float *b, float *y, int64_t n, int64_t bn);

/* y = kernel(a, b) where b equals a's shape or its trailing dimensions. */
static Datum
binary_op(FunctionCallInfo fcinfo, const char *who, binary_kernel kernel, TapeOpKind kind)
{
	Tensor	   *a = PG_GETARG_TENSOR_P(0);
	Tensor	   *b = PG_GETARG_TENSOR_P(1);
	Tensor	   *y;

	require_broadcast(who, a, b);
	y = tensor_new_like(a);
	kernel(a->data, b->data, y->data, tensor_numel(a), tensor_numel(b));
	if (autograd_recording())
		tape_record_op(kind, (Tensor *[]) {a, b}, 2, NULL, y);
	PG_RETURN_TENSOR_P(y);
}

PG_FUNCTION_INFO_V1(llm_add_sql);
Datum
llm_add_sql(PG_FUNCTION_ARGS)
{
	return binary_op(fcinfo, "llm_add", llm_add, TAPE_OP_ADD);
}

static void
add_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	llm_add_backward(dout, din[0], din[1], in[0]->numel, in[1]->numel);
}

const TapeOpMethods tape_add = {.backward = add_backward};

PG_FUNCTION_INFO_V1(llm_mul_sql);
Datum
llm_mul_sql(PG_FUNCTION_ARGS)
{
	return binary_op(fcinfo, "llm_mul", llm_mul, TAPE_OP_MUL);
}

static void
mul_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	llm_mul_backward(dout, in[0]->data, in[1]->data, din[0], din[1], in[0]->numel, in[1]->numel);
}

const TapeOpMethods tape_mul = {.backward = mul_backward};

PG_FUNCTION_INFO_V1(llm_scale_sql);
Datum
llm_scale_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *x = PG_GETARG_TENSOR_P(0);
	float8		s = PG_GETARG_FLOAT8(1);
	Tensor	   *y;

	if (!isfinite(s))
		ereport(ERROR,
				(errcode(ERRCODE_FLOATING_POINT_EXCEPTION),
				 errmsg("llm_scale: the factor must be a finite float32 value, got %g", s)));
	/* As double precision to real: overflow and underflow are out of range. */
	if (fabs(s) > FLT_MAX || ((float) s == 0 && s != 0))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("llm_scale: the factor %g is out of range for type real", s)));
	y = tensor_new_like(x);
	llm_scale(x->data, (float) s, y->data, tensor_numel(x));
	if (autograd_recording())
		tape_record_op(TAPE_OP_SCALE, &x, 1, &(TapeAttrs) {.f = (float) s}, y);
	PG_RETURN_TENSOR_P(y);
}

static char *
scale_attrs(const TapeOp *op)
{
	return psprintf("{\"s\": %.9g}", op->f);
}

static void
scale_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	if (din[0])
		llm_scale_backward(dout, (float) op->f, din[0], in[0]->numel);
}

const TapeOpMethods tape_scale = {scale_attrs, scale_backward};

PG_FUNCTION_INFO_V1(llm_gelu_sql);
Datum
llm_gelu_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *x = PG_GETARG_TENSOR_P(0);
	Tensor	   *y = tensor_new_like(x);

	llm_check_status(llm_gelu(x->data, y->data, tensor_numel(x)));
	if (autograd_recording())
		tape_record_op(TAPE_OP_GELU, &x, 1, NULL, y);
	PG_RETURN_TENSOR_P(y);
}

static void
gelu_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	if (din[0])
		llm_check_status(llm_gelu_backward(in[0]->data, dout, din[0], in[0]->numel));
}

const TapeOpMethods tape_gelu = {.backward = gelu_backward};

/* ---- shape ------------------------------------------------------------- */

PG_FUNCTION_INFO_V1(llm_transpose_sql);
Datum
llm_transpose_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *x = PG_GETARG_TENSOR_P(0);
	int64		dims[2];
	Tensor	   *y;

	require_ndim("llm_transpose", "the argument", x, 2);
	dims[0] = x->dims[1];
	dims[1] = x->dims[0];
	y = tensor_new(2, dims);
	llm_transpose(x->data, y->data, x->dims[0], x->dims[1]);
	if (autograd_recording())
		tape_record_op(TAPE_OP_TRANSPOSE, &x, 1, NULL, y);
	PG_RETURN_TENSOR_P(y);
}

static void
transpose_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	if (din[0])
		llm_transpose_backward(dout, din[0], in[0]->dims[0], in[0]->dims[1]);
}

const TapeOpMethods tape_transpose = {.backward = transpose_backward};

PG_FUNCTION_INFO_V1(llm_reshape_sql);
Datum
llm_reshape_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *x = PG_GETARG_TENSOR_P(0);
	int			ndim;
	int32	   *want = int_array_values("llm_reshape", "shape", PG_GETARG_ARRAYTYPE_P(1), 1, &ndim);
	int64		dims[LLM_MAX_NDIM];
	int64		n = tensor_numel(x);
	int64		known = 1;
	int			infer = -1;
	Tensor	   *y;

	if (ndim < 1 || ndim > LLM_MAX_NDIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_reshape: a shape has 1 to %d dimensions, got %d", LLM_MAX_NDIM, ndim)));
	for (int i = 0; i < ndim; i++)
		dims[i] = want[i];
	for (int i = 0; i < ndim; i++)
	{
		if (want[i] == -1 && infer < 0)
			infer = i;
		else if (want[i] < 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("llm_reshape: bad dimension %d in shape %s (use one -1 to infer a dimension)",
							want[i], shape_str(ndim, dims))));
		else if (pg_mul_s64_overflow(known, want[i], &known) || known > LLM_MAX_ELEMS)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("llm_reshape: shape %s is too large (the limit is " INT64_FORMAT " elements)",
							shape_str(ndim, dims), (int64) LLM_MAX_ELEMS)));
	}
	if (infer >= 0 && n % known == 0)
		dims[infer] = n / known;
	if ((infer >= 0 && n % known != 0) || (infer < 0 && known != n))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_reshape: cannot reshape %s (" INT64_FORMAT " elements) to %s",
						tensor_shape_str(x), n, shape_str(ndim, dims))));
	y = tensor_new(ndim, dims);
	memcpy(y->data, x->data, n * sizeof(float));
	if (autograd_recording())
		tape_record_op(TAPE_OP_RESHAPE, &x, 1, NULL, y);
	PG_RETURN_TENSOR_P(y);
}

/* the same values in the same order, so dx += dy */
static void
reshape_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	llm_add_backward(dout, din[0], NULL, in[0]->numel, in[0]->numel);
}

const TapeOpMethods tape_reshape = {.backward = reshape_backward};

/*
 * llm_slice(x, start, stop): rows start .. stop-1 of the first axis (0-based).
 * Only the header and the wanted rows are detoasted, so one row of a large
 * tensor stored out of line (STORAGE EXTERNAL) is cheap to read.
 */
PG_FUNCTION_INFO_V1(llm_slice_sql);
Datum
llm_slice_sql(PG_FUNCTION_ARGS)
{
	Datum		raw = PG_GETARG_DATUM(0);
	Tensor	   *x = DatumGetTensorHeaderP(raw);
	int32		start = PG_GETARG_INT32(1);
	int32		stop = PG_GETARG_INT32(2);
	int64		dims[LLM_MAX_NDIM];
	int64		row;
	struct varlena *rows;
	Tensor	   *y;

	if (start < 0 || stop > x->dims[0] || start >= stop)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("llm_slice: rows [%d, %d) are not a non-empty range inside 0..%d of shape %s",
						start, stop, x->dims[0], tensor_shape_str(x))));
	for (int i = 0; i < x->ndim; i++)
		dims[i] = x->dims[i];
	row = tensor_numel(x) / x->dims[0];
	dims[0] = stop - start;
	rows = PG_DETOAST_DATUM_SLICE(raw, TENSOR_HDRSZ - VARHDRSZ + start * row * sizeof(float),
								  dims[0] * row * sizeof(float));
	y = tensor_new(x->ndim, dims);
	memcpy(y->data, VARDATA(rows), dims[0] * row * sizeof(float));
	if (autograd_recording())
	{
		/* The tape needs the whole input (to know it by value). */
		Tensor	   *whole = DatumGetTensorP(raw);

		tape_record_op(TAPE_OP_SLICE, &whole, 1, &(TapeAttrs) {.i = {start, stop}}, y);
	}
	PG_RETURN_TENSOR_P(y);
}

static char *
slice_attrs(const TapeOp *op)
{
	return psprintf("{\"start\": " INT64_FORMAT ", \"stop\": " INT64_FORMAT "}", op->i[0], op->i[1]);
}

/* rows start .. stop-1, so those rows of dx += dy */
static void
slice_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	int64		row = in[0]->numel / in[0]->dims[0];

	if (din[0])
		llm_add_backward(dout, din[0] + op->i[0] * row, NULL, out->numel, out->numel);
}

const TapeOpMethods tape_slice = {slice_attrs, slice_backward};

/* ---- normalisation ------------------------------------------------------- */

PG_FUNCTION_INFO_V1(llm_softmax_sql);
Datum
llm_softmax_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *x = PG_GETARG_TENSOR_P(0);
	bool		causal = PG_GETARG_BOOL(1);
	int64		causal_rows = 0;
	Tensor	   *y;

	tensor_check_finite("llm_softmax", x);
	if (causal)
	{
		if (x->ndim < 2 || x->dims[x->ndim - 2] > x->dims[x->ndim - 1])
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("llm_softmax: a causal mask needs [..., Tq, Tk] scores with Tq <= Tk, got %s",
							tensor_shape_str(x))));
		causal_rows = x->dims[x->ndim - 2];
	}
	y = tensor_new_like(x);
	llm_check_status(llm_softmax(x->data, y->data, tensor_rows(x), tensor_cols(x), causal_rows));
	if (autograd_recording())
		tape_record_op(TAPE_OP_SOFTMAX, &x, 1, &(TapeAttrs) {.i = {causal}}, y);
	PG_RETURN_TENSOR_P(y);
}

static char *
softmax_attrs(const TapeOp *op)
{
	return psprintf("{\"causal\": %s}", json_bool(op->i[0]));
}

static void
softmax_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	int64		causal_rows = op->i[0] ? out->dims[out->ndim - 2] : 0;

	if (din[0])
		llm_check_status(llm_softmax_backward(out->data, dout, din[0], rows_of(out),
											  out->dims[out->ndim - 1], causal_rows));
}

const TapeOpMethods tape_softmax = {softmax_attrs, softmax_backward};

PG_FUNCTION_INFO_V1(llm_layernorm_sql);
Datum
llm_layernorm_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *x = PG_GETARG_TENSOR_P(0);
	Tensor	   *g = PG_GETARG_TENSOR_P(1);
	Tensor	   *b = PG_GETARG_TENSOR_P(2);
	float4		eps = PG_GETARG_FLOAT4(3);
	int64		C = tensor_cols(x);
	Tensor	   *y;

	if (!(eps > 0) || !isfinite(eps))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_layernorm: eps must be a positive finite number, got %g", eps)));
	if (g->ndim != 1 || g->dims[0] != C || b->ndim != 1 || b->dims[0] != C)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_layernorm: gamma %s and beta %s must both be [" INT64_FORMAT "] for input %s",
						tensor_shape_str(g), tensor_shape_str(b), C, tensor_shape_str(x))));
	tensor_check_finite("llm_layernorm", x);
	y = tensor_new_like(x);
	llm_check_status(llm_layernorm(x->data, g->data, b->data, y->data,
								   tensor_rows(x), C, eps, NULL, NULL));
	if (autograd_recording())
		tape_record_op(TAPE_OP_LAYERNORM, (Tensor *[]) {x, g, b}, 3, &(TapeAttrs) {.f = eps}, y);
	PG_RETURN_TENSOR_P(y);
}

static char *
layernorm_attrs(const TapeOp *op)
{
	return psprintf("{\"eps\": %.9g}", op->f);
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

const TapeOpMethods tape_layernorm = {layernorm_attrs, layernorm_backward};

/* ---- embedding and loss -------------------------------------------------- */

PG_FUNCTION_INFO_V1(llm_embedding_sql);
Datum
llm_embedding_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *w = PG_GETARG_TENSOR_P(0);
	int			n;
	int32	   *ids = int_array_values("llm_embedding", "ids", PG_GETARG_ARRAYTYPE_P(1), 1, &n);
	int64		dims[2];
	Tensor	   *y;

	require_ndim("llm_embedding", "the weight", w, 2);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_embedding: the id array is empty")));
	check_token_ids("llm_embedding", "id", ids, n, w->dims[0], false, "");
	dims[0] = n;
	dims[1] = w->dims[1];
	y = tensor_new(2, dims);
	llm_embedding(w->data, ids, y->data, n, w->dims[1]);
	if (autograd_recording())
		tape_record_op(TAPE_OP_EMBEDDING, &w, 1, &(TapeAttrs) {.ids = ids, .n_ids = n}, y);
	PG_RETURN_TENSOR_P(y);
}

static char *
embedding_attrs(const TapeOp *op)
{
	return ids_json("ids", op);
}

static void
embedding_backward(const TapeOp *op, TapeTensor **in, const TapeTensor *out, float **din, const float *dout)
{
	if (din[0])
		llm_embedding_backward(op->ids, dout, din[0], op->n_ids, in[0]->dims[1]);
}

const TapeOpMethods tape_embedding = {embedding_attrs, embedding_backward};

PG_FUNCTION_INFO_V1(llm_cross_entropy_sql);
Datum
llm_cross_entropy_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *logits = PG_GETARG_TENSOR_P(0);
	int			n;
	int32	   *targets = int_array_values("llm_cross_entropy", "targets", PG_GETARG_ARRAYTYPE_P(1), 1, &n);
	double		loss;
	int64		counted;

	require_ndim("llm_cross_entropy", "the logits", logits, 2);
	if (n != logits->dims[0])
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_cross_entropy: %d targets for logits of shape %s (one per row)",
						n, tensor_shape_str(logits))));
	check_token_ids("llm_cross_entropy", "id", targets, n, logits->dims[1], true, "");
	tensor_check_finite("llm_cross_entropy", logits);
	llm_check_status(llm_cross_entropy(logits->data, targets, n, logits->dims[1],
									   &loss, &counted, NULL));
	if (counted == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_cross_entropy: every target is the ignore index -100")));
	if (autograd_recording())
	{
		float		value = (float4) loss;

		tape_record_tensors(TAPE_OP_CROSS_ENTROPY, &logits, 1,
							&(TapeAttrs) {.ids = targets, .n_ids = n},
							&value, 1, (int64[]) {1});
	}
	PG_RETURN_FLOAT4((float4) loss);
}

static char *
cross_entropy_attrs(const TapeOp *op)
{
	return ids_json("targets", op);
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

const TapeOpMethods tape_cross_entropy = {cross_entropy_attrs, cross_entropy_backward};

/* ---- attention ----------------------------------------------------------- */

PG_FUNCTION_INFO_V1(llm_attention_sql);
Datum
llm_attention_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *q = PG_GETARG_TENSOR_P(0);
	Tensor	   *k = PG_GETARG_TENSOR_P(1);
	Tensor	   *v = PG_GETARG_TENSOR_P(2);
	int32		n_head = PG_GETARG_INT32(3);
	bool		causal = PG_GETARG_BOOL(4);
	int64		C;
	Tensor	   *y;

	require_ndim("llm_attention", "q", q, 2);
	require_ndim("llm_attention", "k", k, 2);
	require_ndim("llm_attention", "v", v, 2);
	C = q->dims[1];
	if (!same_shape(k, v) || k->dims[1] != C)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_attention: q %s, k %s and v %s must be [Tq,C], [Tk,C], [Tk,C]",
						tensor_shape_str(q), tensor_shape_str(k), tensor_shape_str(v))));
	if (n_head < 1 || C % n_head != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_attention: n_head %d does not divide the width " INT64_FORMAT,
						n_head, C)));
	if (causal && q->dims[0] > k->dims[0])
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_attention: causal attention needs Tq <= Tk, got q %s and k %s",
						tensor_shape_str(q), tensor_shape_str(k))));
	tensor_check_finite("llm_attention", q);
	tensor_check_finite("llm_attention", k);
	y = tensor_new_like(q);
	llm_check_status(llm_attention(q->data, C, k->data, C, v->data, C, y->data,
								   q->dims[0], k->dims[0], C, n_head, causal, NULL));
	/* finite q, k and v give a finite y, unless q k^T passed float32's range */
	if (tensor_first_nonfinite(y) >= 0 && tensor_first_nonfinite(v) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("llm_attention: value out of range: overflow in the scores q k^T of q %s and k %s",
						tensor_shape_str(q), tensor_shape_str(k)),
				 errhint("The scores of float32 attention must stay below %g.", FLT_MAX)));
	if (autograd_recording())
		tape_record_op(TAPE_OP_ATTENTION, (Tensor *[]) {q, k, v}, 3,
					   &(TapeAttrs) {.i = {n_head, causal}}, y);
	PG_RETURN_TENSOR_P(y);
}

static char *
attention_attrs(const TapeOp *op)
{
	return psprintf("{\"n_head\": " INT64_FORMAT ", \"causal\": %s}", op->i[0], json_bool(op->i[1]));
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

const TapeOpMethods tape_attention = {attention_attrs, attention_backward};

/*
 * llm_attention_qkv has no SQL function: GPT-2's forward records its
 * attention over the fused [T, 3C] q, k, v this way (gpt2/tape.c).
 */
static char *
attention_qkv_attrs(const TapeOp *op)
{
	return psprintf("{\"n_head\": " INT64_FORMAT ", \"causal\": true, \"qkv\": \"fused [T, 3C]: q, k, v side by side\"}",
					op->i[0]);
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

const TapeOpMethods tape_attention_qkv = {attention_qkv_attrs, attention_qkv_backward};
