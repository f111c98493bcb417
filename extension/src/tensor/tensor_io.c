/*
 * tensor_io.c -- the `tensor` type's text and binary I/O, and its casts to
 * and from real[] and raw little-endian bytea.
 */
#include "postgres.h"

#include <ctype.h>
#include <math.h>

#include "catalog/pg_type.h"
#include "common/base64.h"
#include "common/shortest_dec.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "parser/scansup.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/lsyscache.h"

#include "tensor/tensor.h"

/* ---- text I/O ------------------------------------------------------- */

/*
 * A tensor of more values than this is written as base64 of its
 * little-endian float32 bytes, 'base64:[50257,768]:AAAA...': 5.3 characters
 * a value against about 13 as decimals.  No one reads 8 million numbers, and
 * pg_dump writes each row of a table as one line of text, which must stay
 * under 1 GB: GPT-2 small's wte.weight (38.6 million values) with its AdamW
 * moments would not, as decimals.  tensor_in reads both forms.
 */
#define LLM_TEXT_MAX_LISTED ((int64) 1 << 23)
#define BASE64_PREFIX "base64:"

typedef struct TextParser
{
	const char *input;			/* whole literal, for messages */
	const char *p;				/* cursor */
	int			ndim;			/* depth of the numbers, once seen */
	int64		dims[LLM_MAX_NDIM];
	bool		seen[LLM_MAX_NDIM];
	float	   *vals;
	int64		nvals;
	int64		cap;
} TextParser;

/* The literal in a message: its first 200 characters (a tensor's text can run to megabytes). */
#define QUOTED_INPUT_MAX 200

llm_noreturn static void
syntax_error(TextParser *ps, const char *detail)
{
	int			len = strlen(ps->input);

	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("invalid input syntax for type tensor: \"%.*s%s\"", Min(len, QUOTED_INPUT_MAX),
					ps->input, len > QUOTED_INPUT_MAX ? "..." : ""),
			 errdetail("%s (at character %d).", detail, (int) (ps->p - ps->input) + 1)));
}

static void
skip_space(TextParser *ps)
{
	while (scanner_isspace(*ps->p))
		ps->p++;
}

static void
push_value(TextParser *ps, float v)
{
	if (ps->nvals == ps->cap)
	{
		if (ps->cap >= LLM_MAX_ELEMS)
			syntax_error(ps, "too many values");
		ps->cap = Min(ps->cap * 2, LLM_MAX_ELEMS);
		ps->vals = repalloc_huge(ps->vals, ps->cap * sizeof(float));
	}
	ps->vals[ps->nvals++] = v;
}

static float
parse_number(TextParser *ps)
{
	char	   *end;
	float		v;

	errno = 0;
	v = strtof(ps->p, &end);
	if (end == ps->p)
		syntax_error(ps, "expected a number");
	/* real's rules: overflow, and a nonzero value that underflows to 0 */
	if (errno == ERANGE && (isinf(v) || v == 0))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("\"%.*s\" is out of range for type real",
						(int) (end - ps->p), ps->p)));
	ps->p = end;
	/* One NaN: strtof keeps the sign and payload of "-nan" or "nan(0x123)". */
	return isnan(v) ? get_float4_nan() : v;
}

/* Parse one bracketed list at `depth`; its length must match earlier ones. */
static void
parse_list(TextParser *ps, int depth)
{
	int64		count = 0;
	bool		numbers;

	if (depth >= LLM_MAX_NDIM)
		syntax_error(ps, "too many dimensions (at most 8)");
	skip_space(ps);
	if (*ps->p != '[')
		syntax_error(ps, "expected \"[\"");
	ps->p++;
	skip_space(ps);
	if (*ps->p == ']')
		syntax_error(ps, "empty lists are not allowed");
	numbers = (*ps->p != '[');
	if (numbers && ps->ndim == 0)
		ps->ndim = depth + 1;
	if (numbers != (depth + 1 == ps->ndim))
		syntax_error(ps, "nesting depth differs between elements");

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (numbers)
			push_value(ps, parse_number(ps));
		else
			parse_list(ps, depth + 1);
		count++;
		skip_space(ps);
		if (*ps->p == ',')
		{
			ps->p++;
			skip_space(ps);
			continue;
		}
		if (*ps->p == ']')
		{
			ps->p++;
			break;
		}
		syntax_error(ps, "expected \",\" or \"]\"");
	}

	if (!ps->seen[depth])
	{
		ps->seen[depth] = true;
		ps->dims[depth] = count;
	}
	else if (ps->dims[depth] != count)
		syntax_error(ps, psprintf("ragged nesting: a list at depth %d has " INT64_FORMAT
								  " elements, an earlier one " INT64_FORMAT,
								  depth + 1, count, ps->dims[depth]));
}

static Tensor *raw_floats_to_tensor(const char *le_bytes, int ndim, const int64 *dims);

/* Standard base64, strictly: groups of 4 of A-Z a-z 0-9 + /, the last ending in at most two '='. */
static bool
is_strict_base64(const char *s, int len)
{
	int			padding = 0;

	if (len % 4 != 0)
		return false;
	while (padding < 2 && padding < len && s[len - 1 - padding] == '=')
		padding++;
	for (int i = 0; i < len - padding; i++)
		if (!isalnum((unsigned char) s[i]) && s[i] != '+' && s[i] != '/')
			return false;
	return true;
}

/* 'base64:[d1,d2,...]:<base64 of the float32 values, little-endian>' */
static Tensor *
parse_base64(TextParser *ps)
{
	int			ndim = 0;
	int64		dims[LLM_MAX_NDIM];
	int64		n;
	int			payload_len;
	char	   *bytes;
	int			decoded;

	ps->p += strlen(BASE64_PREFIX);
	if (*ps->p++ != '[')
		syntax_error(ps, "expected \"[\" and the shape after \"base64:\"");
	for (;;)
	{
		char	   *end;

		if (ndim == LLM_MAX_NDIM)
			syntax_error(ps, "too many dimensions (at most 8)");
		errno = 0;
		dims[ndim] = strtoll(ps->p, &end, 10);
		if (end == ps->p || !isdigit((unsigned char) *ps->p) || errno == ERANGE)
			syntax_error(ps, "expected a dimension");
		ps->p = end;
		ndim++;
		if (*ps->p == ']')
			break;
		if (*ps->p++ != ',')
			syntax_error(ps, "expected \",\" or \"]\"");
	}
	if (ps->p[1] != ':')
		syntax_error(ps, "expected \":\" after the shape");
	ps->p += 2;
	n = tensor_check_shape("tensor", ndim, dims);
	payload_len = strlen(ps->p);
	if (!is_strict_base64(ps->p, payload_len))
		syntax_error(ps, "invalid base64");
	bytes = palloc(pg_b64_dec_len(payload_len) + 1);
	decoded = pg_b64_decode((void *) ps->p, payload_len, (void *) bytes, pg_b64_dec_len(payload_len) + 1);
	if (decoded < 0)
		syntax_error(ps, "invalid base64");
	if (decoded != n * (int64) sizeof(float))
		syntax_error(ps, psprintf("the base64 holds %d bytes, shape %s needs " INT64_FORMAT,
								  decoded, shape_str(ndim, dims), n * (int64) sizeof(float)));
	return raw_floats_to_tensor(bytes, ndim, dims);
}

PG_FUNCTION_INFO_V1(tensor_in);
Datum
tensor_in(PG_FUNCTION_ARGS)
{
	char	   *str = PG_GETARG_CSTRING(0);
	TextParser	ps = {0};
	Tensor	   *t;

	ps.input = ps.p = str;
	if (strncmp(str, BASE64_PREFIX, strlen(BASE64_PREFIX)) == 0)
		PG_RETURN_TENSOR_P(parse_base64(&ps));
	ps.cap = 64;
	ps.vals = palloc(ps.cap * sizeof(float));
	parse_list(&ps, 0);
	skip_space(&ps);
	if (*ps.p != '\0')
		syntax_error(&ps, "junk after the closing \"]\"");

	t = tensor_new(ps.ndim, ps.dims);
	memcpy(t->data, ps.vals, ps.nvals * sizeof(float));
	PG_RETURN_TENSOR_P(t);
}

static void
append_float(StringInfo s, float v)
{
	char		buf[32];

	if (isnan(v))
		appendStringInfoString(s, "NaN");
	else if (isinf(v))
		appendStringInfoString(s, v > 0 ? "Infinity" : "-Infinity");
	else
	{
		float_to_shortest_decimal_buf(v, buf);
		appendStringInfoString(s, buf);
	}
}

static char *
base64_text(const Tensor *t)
{
	int64		n = tensor_numel(t);
	bytea	   *raw = tensor_to_bytea(t);
	char	   *head = psprintf(BASE64_PREFIX "%s:", tensor_shape_str(t));
	int64		encoded_len = pg_b64_enc_len(n * sizeof(float));
	char	   *out;

	if (strlen(head) + encoded_len + 1 > MaxAllocSize)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a tensor of shape %s is too large for text output", tensor_shape_str(t)),
				 errhint("Read it in binary (tensor_send), or as bytea: llm_bytea(t).")));
	out = palloc(strlen(head) + encoded_len + 1);
	strcpy(out, head);
	if (pg_b64_encode((void *) VARDATA(raw), n * sizeof(float), out + strlen(head), encoded_len) < 0)
		elog(ERROR, "pg_llm: base64 encoding failed");
	out[strlen(head) + encoded_len] = '\0';
	return out;
}

PG_FUNCTION_INFO_V1(tensor_out);
Datum
tensor_out(PG_FUNCTION_ARGS)
{
	Tensor	   *t = PG_GETARG_TENSOR_P(0);
	int64		n = tensor_numel(t);
	int64		stride[LLM_MAX_NDIM];
	StringInfoData s;

	if (n > LLM_TEXT_MAX_LISTED)
		PG_RETURN_CSTRING(base64_text(t));

	/* stride[d] = number of values in one list at depth d */
	stride[t->ndim - 1] = t->dims[t->ndim - 1];
	for (int d = t->ndim - 2; d >= 0; d--)
		stride[d] = stride[d + 1] * t->dims[d];

	initStringInfo(&s);
	for (int64 i = 0; i < n; i++)
	{
		/* open a bracket for every list that starts at i */
		for (int d = 0; d < t->ndim; d++)
			if (i % stride[d] == 0)
				appendStringInfoChar(&s, '[');
		append_float(&s, t->data[i]);
		/* close a bracket for every list that ends at i */
		for (int d = t->ndim - 1; d >= 0; d--)
			if ((i + 1) % stride[d] == 0)
				appendStringInfoChar(&s, ']');
		if (i + 1 < n)
			appendStringInfoChar(&s, ',');
	}
	PG_RETURN_CSTRING(s.data);
}

/* ---- binary I/O: int16 ndim, int16 dtype, int32 dims[], float4 data[] -- */

PG_FUNCTION_INFO_V1(tensor_send);
Datum
tensor_send(PG_FUNCTION_ARGS)
{
	Tensor	   *t = PG_GETARG_TENSOR_P(0);
	int64		n = tensor_numel(t);
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendint16(&buf, t->ndim);
	pq_sendint16(&buf, t->dtype);
	for (int i = 0; i < t->ndim; i++)
		pq_sendint32(&buf, t->dims[i]);
	enlargeStringInfo(&buf, n * sizeof(float));
	for (int64 i = 0; i < n; i++)
		pq_sendfloat4(&buf, t->data[i]);
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

PG_FUNCTION_INFO_V1(tensor_recv);
Datum
tensor_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int			ndim = pq_getmsgint(buf, 2);
	int			dtype = pq_getmsgint(buf, 2);
	int64		dims[LLM_MAX_NDIM];
	int64		n;
	Tensor	   *t;

	if (dtype != LLM_DTYPE_FLOAT32)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("tensor_recv: unsupported dtype %d", dtype)));
	if (ndim < 1 || ndim > LLM_MAX_NDIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("tensor_recv: ndim %d is outside 1..%d", ndim, LLM_MAX_NDIM)));
	for (int i = 0; i < ndim; i++)
		dims[i] = (int32) pq_getmsgint(buf, 4);
	n = tensor_check_shape("tensor_recv", ndim, dims);
	if ((int64) (buf->len - buf->cursor) != n * (int64) sizeof(float))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("tensor_recv: shape %s needs " INT64_FORMAT " bytes of data, got %d",
						shape_str(ndim, dims), n * (int64) sizeof(float),
						buf->len - buf->cursor)));
	t = tensor_new(ndim, dims);
	for (int64 i = 0; i < n; i++)
		t->data[i] = pq_getmsgfloat4(buf);
	PG_RETURN_TENSOR_P(t);
}

/* ---- casts and constructors ------------------------------------------- */

PG_FUNCTION_INFO_V1(tensor_to_real_array);
Datum
tensor_to_real_array(PG_FUNCTION_ARGS)
{
	Tensor	   *t = PG_GETARG_TENSOR_P(0);
	int64		n = tensor_numel(t);
	Datum	   *elems = palloc_extended(n * sizeof(Datum), MCXT_ALLOC_HUGE);
	int			dims[LLM_MAX_NDIM];
	int			lbs[LLM_MAX_NDIM];

	if (t->ndim > MAXDIM)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("tensor %s has more dimensions than an array can (%d)",
						tensor_shape_str(t), MAXDIM)));
	for (int64 i = 0; i < n; i++)
		elems[i] = Float4GetDatum(t->data[i]);
	for (int i = 0; i < t->ndim; i++)
	{
		dims[i] = t->dims[i];
		lbs[i] = 1;
	}
	PG_RETURN_ARRAYTYPE_P(construct_md_array(elems, NULL, t->ndim, dims, lbs,
											 FLOAT4OID, sizeof(float4), true,
											 TYPALIGN_INT));
}

/* Values of a real[] argument, NULLs rejected. */
static float *
real_array_values(const char *who, ArrayType *arr, int *count)
{
	Datum	   *elems;
	bool	   *nulls;
	float	   *out;

	deconstruct_array(arr, FLOAT4OID, sizeof(float4), true, TYPALIGN_INT,
					  &elems, &nulls, count);
	if (*count == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: empty array; empty tensors are not supported", who)));
	out = palloc(sizeof(float) * *count);
	for (int i = 0; i < *count; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s: array element %d is NULL", who, i + 1)));
		out[i] = DatumGetFloat4(elems[i]);
	}
	return out;
}

PG_FUNCTION_INFO_V1(tensor_from_real_array);
Datum
tensor_from_real_array(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	int			count;
	float	   *vals = real_array_values("tensor", arr, &count);
	int64		dims[LLM_MAX_NDIM];
	Tensor	   *t;

	for (int i = 0; i < ARR_NDIM(arr); i++)
		dims[i] = ARR_DIMS(arr)[i];
	t = tensor_new(ARR_NDIM(arr), dims);
	memcpy(t->data, vals, count * sizeof(float));
	PG_RETURN_TENSOR_P(t);
}

PG_FUNCTION_INFO_V1(tensor_from_real_array_shape);
Datum
tensor_from_real_array_shape(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	int64		dims[LLM_MAX_NDIM];
	int			ndim = shape_from_array("llm_tensor", PG_GETARG_ARRAYTYPE_P(1), dims);
	int64		n = tensor_check_shape("llm_tensor", ndim, dims);
	int			count;
	float	   *vals = real_array_values("llm_tensor", arr, &count);
	Tensor	   *t;

	if (count != n)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_tensor: %d values do not fill shape %s (" INT64_FORMAT " elements)",
						count, shape_str(ndim, dims), n)));
	t = tensor_new(ndim, dims);
	memcpy(t->data, vals, n * sizeof(float));
	PG_RETURN_TENSOR_P(t);
}

PG_FUNCTION_INFO_V1(tensor_shape);
Datum
tensor_shape(PG_FUNCTION_ARGS)
{
	Tensor	   *t = DatumGetTensorHeaderP(PG_GETARG_DATUM(0));
	Datum		dims[LLM_MAX_NDIM];

	for (int i = 0; i < t->ndim; i++)
		dims[i] = Int32GetDatum(t->dims[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(dims, t->ndim, INT4OID, sizeof(int32),
										  true, TYPALIGN_INT));
}

/* Raw little-endian float32 bytes, as the original pg_llm BYTEA API spoke. */
static void
copy_le_floats(float *dst, const char *src, int64 n)
{
#ifdef WORDS_BIGENDIAN
	for (int64 i = 0; i < n; i++)
	{
		uint32		w;

		memcpy(&w, src + 4 * i, 4);
		w = pg_bswap32(w);
		memcpy(dst + i, &w, 4);
	}
#else
	memcpy(dst, src, n * sizeof(float));
#endif
}

Tensor *
tensor_from_bytea(const char *who, bytea *b, int ndim, const int64 *dims)
{
	int64		len = VARSIZE_ANY_EXHDR(b);
	int64		n;

	if (len % 4 != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("%s: bytea of " INT64_FORMAT " bytes is not a whole number of float32 values",
						who, len)));
	if (ndim == 0)
	{
		int64		flat[1] = {len / 4};

		return tensor_from_bytea(who, b, 1, flat);
	}
	n = tensor_check_shape(who, ndim, dims);
	if (n * 4 != len)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s: bytea holds " INT64_FORMAT " float32 values, shape %s needs " INT64_FORMAT,
						who, len / 4, shape_str(ndim, dims), n)));
	return raw_floats_to_tensor(VARDATA_ANY(b), ndim, dims);
}

/* A tensor of the shape (checked) from its values as little-endian float32 bytes. */
static Tensor *
raw_floats_to_tensor(const char *le_bytes, int ndim, const int64 *dims)
{
	Tensor	   *t = tensor_new(ndim, dims);

	copy_le_floats(t->data, le_bytes, tensor_numel(t));
	return t;
}

bytea *
tensor_to_bytea(const Tensor *t)
{
	int64		n = tensor_numel(t);
	bytea	   *b = (bytea *) palloc(VARHDRSZ + n * sizeof(float));

	SET_VARSIZE(b, VARHDRSZ + n * sizeof(float));
	copy_le_floats((float *) VARDATA(b), (const char *) t->data, n);
	return b;
}

PG_FUNCTION_INFO_V1(tensor_from_bytea_shape);
Datum
tensor_from_bytea_shape(PG_FUNCTION_ARGS)
{
	int64		dims[LLM_MAX_NDIM];
	int			ndim = shape_from_array("llm_tensor", PG_GETARG_ARRAYTYPE_P(1), dims);

	PG_RETURN_TENSOR_P(tensor_from_bytea("llm_tensor", PG_GETARG_BYTEA_PP(0), ndim, dims));
}

PG_FUNCTION_INFO_V1(tensor_from_bytea_flat);
Datum
tensor_from_bytea_flat(PG_FUNCTION_ARGS)
{
	PG_RETURN_TENSOR_P(tensor_from_bytea("tensor", PG_GETARG_BYTEA_PP(0), 0, NULL));
}

PG_FUNCTION_INFO_V1(tensor_to_bytea_fn);
Datum
tensor_to_bytea_fn(PG_FUNCTION_ARGS)
{
	PG_RETURN_BYTEA_P(tensor_to_bytea(PG_GETARG_TENSOR_P(0)));
}
