/*
 * tensor.h -- the `tensor` type: an n-dimensional float32 array in a varlena.
 *
 * Layout (like pgvector's `vector`, with a shape), in the machine's byte
 * order:
 *
 *     int32  vl_len_        varlena header (never touch directly)
 *     int16  ndim           1 .. LLM_MAX_NDIM
 *     uint8  dtype          LLM_DTYPE_FLOAT32 (the only one so far)
 *     uint8  format         LLM_TENSOR_FORMAT: the version of this layout
 *     int32  dims[8]        shape; unused entries are 0
 *     float  data[]         prod(dims) values, row-major
 *
 * The header has a fixed size (40 bytes) so `data` is 8-byte aligned.
 *
 * These bytes are what the tables store, what pg_upgrade copies as they are
 * and what a newer pg_llm must read: a change of the layout takes a new
 * format number, and the reader of every older one (tests/test_tensor_format.py
 * pins the bytes).  Format 0 is the layout of every release so far: until
 * 0.3.0 `dtype` was an int16 and the byte now named `format` was its zero
 * high byte, so every value written before reads as format 0.
 */
#ifndef PG_LLM_TENSOR_H
#define PG_LLM_TENSOR_H

#include "postgres.h"

#include "common/int.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/memutils.h"

#include "support/support.h"

#define LLM_MAX_NDIM 8
#define LLM_DTYPE_FLOAT32 0
#define LLM_TENSOR_FORMAT 0
/* Keep a tensor well under PostgreSQL's 1 GB varlena limit. */
#define LLM_MAX_ELEMS ((int64) (MaxAllocSize - 64) / (int64) sizeof(float))

typedef struct Tensor
{
	int32		vl_len_;
	int16		ndim;
	uint8		dtype;
	uint8		format;
	int32		dims[LLM_MAX_NDIM];
	float		data[FLEXIBLE_ARRAY_MEMBER];
} Tensor;

#define TENSOR_HDRSZ offsetof(Tensor, data)

/* ERROR 0A000: a tensor in a format this pg_llm does not read (written by a newer one). */
llm_noreturn extern void tensor_unknown_format(const Tensor *t);

static inline Tensor *
tensor_check_format(Tensor *t)
{
	if (unlikely(t->format != LLM_TENSOR_FORMAT))
		tensor_unknown_format(t);
	return t;
}

#define DatumGetTensorP(x)		tensor_check_format((Tensor *) PG_DETOAST_DATUM(x))
/* The header only (ndim, dtype, format, dims), read without the values. */
#define DatumGetTensorHeaderP(x) \
	tensor_check_format((Tensor *) PG_DETOAST_DATUM_SLICE(x, 0, TENSOR_HDRSZ - VARHDRSZ))
#define PG_GETARG_TENSOR_P(n)	DatumGetTensorP(PG_GETARG_DATUM(n))
#define PG_RETURN_TENSOR_P(x)	PG_RETURN_POINTER(x)

/* ERROR 22003: the tensor's shape multiplies out beyond int64 (a damaged value). */
llm_noreturn extern void tensor_numel_overflow(const Tensor *t);

/* Number of elements of a tensor. */
static inline int64
tensor_numel(const Tensor *t)
{
	int64		n = 1;

	for (int i = 0; i < t->ndim; i++)
		if (pg_mul_s64_overflow(n, t->dims[i], &n))
			tensor_numel_overflow(t);
	return n;
}

/* Rows and columns of the 2-D view [prod(dims[:-1]), dims[-1]]. */
static inline int64
tensor_cols(const Tensor *t)
{
	return t->dims[t->ndim - 1];
}

static inline int64
tensor_rows(const Tensor *t)
{
	return tensor_numel(t) / tensor_cols(t);
}

/* Allocate a zeroed tensor; ereports on a bad or too large shape. */
extern Tensor *tensor_new(int ndim, const int64 *dims);
/* A new tensor with the same shape as `like` (contents uninitialised). */
extern Tensor *tensor_new_like(const Tensor *like);
/* Check a shape: 1..8 dims, every dim >= 1, total size in range. */
extern int64 tensor_check_shape(const char *who, int ndim, const int64 *dims);
/* "[2,3]" for error messages (palloc'd). */
extern char *tensor_shape_str(const Tensor *t);
extern char *shape_str(int ndim, const int64 *dims);
/* The flat index of the first NaN or infinite value, or -1: all finite. */
extern int64 tensor_first_nonfinite(const Tensor *t);
/* Error if any value is NaN or infinite. */
extern void tensor_check_finite(const char *who, const Tensor *t);
/* The dims of `who`'s int[] argument shape (one-dimensional, no NULLs, 1..8 values). */
extern int	shape_from_array(const char *who, ArrayType *arr, int64 *dims);
/*
 * The values of `who`'s int[] argument `what`, palloc'd, in order: an array
 * of at most max_ndim (1 or 2) dimensions without NULLs, else an ERROR naming
 * both.  dims[] gets its max_ndim sizes, a missing leading one as 1 (a [T]
 * array read as 2-D is [1][T]; '{}' as [0] or [1][0]).  For a 1-D argument:
 *   ids = int_array_values("llm_embedding", "ids", arr, 1, &n);
 */
extern int32 *int_array_values(const char *who, const char *what, ArrayType *arr,
							   int max_ndim, int *dims);

/*
 * ERROR 22023 unless every id is in [0, vocab), or is -100 when ignore_ok.
 * The message reads "<who>: <what> <id> at position <i> is outside the
 * vocabulary 0..<vocab-1><suffix>".
 */
extern void check_token_ids(const char *who, const char *what, const int32 *ids, int n,
							int64 vocab, bool ignore_ok, const char *suffix);

/* Raw little-endian float32 bytea <-> tensor (ndim 0: a flat 1-D tensor). */
extern Tensor *tensor_from_bytea(const char *who, bytea *b, int ndim, const int64 *dims);
extern bytea *tensor_to_bytea(const Tensor *t);

#endif							/* PG_LLM_TENSOR_H */
