/*
 * tensor.c -- the `tensor` type in C: allocation, shapes and their checks,
 * int[] arguments (shapes, token ids).  Its I/O and casts are in tensor_io.c.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "tensor/tensor.h"

char *
shape_str(int ndim, const int64 *dims)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoChar(&s, '[');
	for (int i = 0; i < ndim; i++)
		appendStringInfo(&s, "%s" INT64_FORMAT, i ? "," : "", dims[i]);
	appendStringInfoChar(&s, ']');
	return s.data;
}

char *
tensor_shape_str(const Tensor *t)
{
	int64		dims[LLM_MAX_NDIM];

	for (int i = 0; i < t->ndim; i++)
		dims[i] = t->dims[i];
	return shape_str(t->ndim, dims);
}

int64
tensor_check_shape(const char *who, int ndim, const int64 *dims)
{
	int64		n = 1;

	if (ndim < 1 || ndim > LLM_MAX_NDIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: a tensor has 1 to %d dimensions, got %d",
						who, LLM_MAX_NDIM, ndim)));
	for (int i = 0; i < ndim; i++)
	{
		if (dims[i] < 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: shape %s has a dimension < 1; empty tensors are not supported",
							who, shape_str(ndim, dims))));
		if (dims[i] > PG_INT32_MAX || n > LLM_MAX_ELEMS / dims[i])
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("%s: shape %s is too large (the limit is " INT64_FORMAT " elements)",
							who, shape_str(ndim, dims), (int64) LLM_MAX_ELEMS)));
		n *= dims[i];
	}
	return n;
}

void
tensor_numel_overflow(const Tensor *t)
{
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("tensor of shape %s has more elements than fit in 64 bits", tensor_shape_str(t))));
}

void
tensor_unknown_format(const Tensor *t)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("tensor value of on-disk format %d; this pg_llm reads format %d",
					t->format, LLM_TENSOR_FORMAT),
			 errhint("It was written by a newer release of pg_llm: install that one.")));
}

Tensor *
tensor_new(int ndim, const int64 *dims)
{
	int64		n = tensor_check_shape("tensor", ndim, dims);
	Tensor	   *t = (Tensor *) palloc0(TENSOR_HDRSZ + n * sizeof(float));

	SET_VARSIZE(t, TENSOR_HDRSZ + n * sizeof(float));
	t->ndim = ndim;
	t->dtype = LLM_DTYPE_FLOAT32;
	t->format = LLM_TENSOR_FORMAT;
	for (int i = 0; i < ndim; i++)
		t->dims[i] = (int32) dims[i];
	return t;
}

Tensor *
tensor_new_like(const Tensor *like)
{
	Tensor	   *t = (Tensor *) palloc(VARSIZE(like));

	memcpy(t, like, TENSOR_HDRSZ);
	return t;
}

int64
tensor_first_nonfinite(const Tensor *t)
{
	int64		n = tensor_numel(t);

	for (int64 i = 0; i < n; i++)
		if (!isfinite(t->data[i]))
			return i;
	return -1;
}

void
tensor_check_finite(const char *who, const Tensor *t)
{
	int64		i = tensor_first_nonfinite(t);

	if (i >= 0)
		ereport(ERROR,
				(errcode(ERRCODE_FLOATING_POINT_EXCEPTION),
				 errmsg("%s: input has a non-finite value (%s) at flat index " INT64_FORMAT,
						who, isnan(t->data[i]) ? "NaN" : "Infinity", i)));
}

int32 *
int_array_values(const char *who, const char *what, ArrayType *arr, int max_ndim, int *dims)
{
	int			ndim = ARR_NDIM(arr);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int32	   *out;

	if (ARR_ELEMTYPE(arr) != INT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s: %s must be an int[] array", who, what)));
	/* '{{2},{2}}' is not the shape [2,2], nor are '{{1,2}}' two token ids */
	if (ndim > max_ndim)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: %s must be a %s int[] array, got %d dimensions", who, what,
						max_ndim == 1 ? "one-dimensional" : "one- or two-dimensional", ndim)));
	deconstruct_array(arr, INT4OID, sizeof(int32), true, TYPALIGN_INT, &elems, &nulls, &n);
	out = palloc(sizeof(int32) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s: %s must not contain NULLs; element %d is NULL", who, what, i + 1)));
		out[i] = DatumGetInt32(elems[i]);
	}
	/* right-aligned: the array's last dimension is dims[max_ndim - 1] */
	for (int i = 0; i < max_ndim; i++)
	{
		int			d = i - (max_ndim - ndim);

		dims[i] = d >= 0 ? ARR_DIMS(arr)[d] : 1;
	}
	if (ndim == 0)
		dims[max_ndim - 1] = 0;
	return out;
}

int
shape_from_array(const char *who, ArrayType *arr, int64 *dims)
{
	int			n;
	int32	   *vals = int_array_values(who, "shape", arr, 1, &n);

	if (n < 1 || n > LLM_MAX_NDIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: a shape has 1 to %d dimensions, got %d",
						who, LLM_MAX_NDIM, n)));
	for (int i = 0; i < n; i++)
		dims[i] = vals[i];
	tensor_check_shape(who, n, dims);
	return n;
}

void
check_token_ids(const char *who, const char *what, const int32 *ids, int n,
				int64 vocab, bool ignore_ok, const char *suffix)
{
	for (int i = 0; i < n; i++)
		if (ids[i] >= vocab || (ids[i] < 0 && !(ignore_ok && ids[i] == -100)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: %s %d at position %d is outside the vocabulary 0..%lld%s",
							who, what, ids[i], i + 1, (long long) vocab - 1, suffix)));
}
