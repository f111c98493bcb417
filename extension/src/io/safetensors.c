/*
 * safetensors.c -- read and write HuggingFace's safetensors format.
 *
 * A safetensors file (https://github.com/huggingface/safetensors) is:
 *
 *   bytes 0 .. 7      N, the size of the header: unsigned 64-bit little-endian
 *   bytes 8 .. 8+N    the header: a JSON object in UTF-8, maybe padded with
 *                     spaces so that the data starts 8-byte aligned:
 *                       {"__metadata__": {"format": "pt"},
 *                        "wte.weight": {"dtype": "F32", "shape": [50257, 768],
 *                                       "data_offsets": [0, 154389504]},
 *                        ...}
 *   the rest          the data section: each tensor's values, row-major and
 *                     little-endian, at bytes [begin, end) of the section
 *
 * So a reader trusts nothing: the header length must fit in the file, every
 * [begin, end) must fit in the data section and hold exactly
 * prod(shape) * sizeof(dtype) bytes, and the tensors must tile the data
 * section exactly: no overlap, no gap, nothing after the last one.
 *
 *   llm_read_safetensors(path) -> (name, dtype, shape, data) per tensor
 *   llm_write_safetensors(path, model) -> bytes written, from llm_param
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "io/formats.h"

/* The format's own limit (the reference implementation refuses more). */
#define ST_MAX_HEADER (100 * 1024 * 1024)

/* One tensor described by the header. */
typedef struct StEntry
{
	char	   *name;
	const char *dtype_name;		/* as in the file: "F32" */
	LlmFileDtype dtype;
	int			ndim;
	int64		dims[LLM_MAX_NDIM];
	int64		numel;
	int64		begin;			/* byte range in the data section */
	int64		end;
} StEntry;

/* Who is reading which file: for messages. */
typedef struct StReader
{
	const char *who;
	const char *path;
} StReader;

/* ---- errors ----------------------------------------------------------------- */

llm_noreturn static void
format_error(const StReader *r, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("%s: invalid safetensors file \"%s\": %s", r->who, r->path, problem)));
}

llm_noreturn static void
truncated_error(const StReader *r, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("%s: safetensors file \"%s\" is truncated or corrupt: %s",
					r->who, r->path, problem)));
}

/* ---- the JSON header ---------------------------------------------------------- */

/*
 * Parse the header with PostgreSQL's own jsonb parser.  Its errors ("invalid
 * input syntax for type json") would not say which file was wrong, so a data
 * error (SQLSTATE class 22) becomes ours; anything else (out of memory, a
 * cancel) passes through unchanged.
 */
static Jsonb *
parse_json_header(const StReader *r, const char *utf8, int len)
{
	MemoryContext mcxt = CurrentMemoryContext;
	Jsonb	   *volatile jb = NULL;

	PG_TRY();
	{
		char	   *json = pg_any_to_server(utf8, len, PG_UTF8);

		jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(mcxt);
		edata = CopyErrorData();
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION)
			PG_RE_THROW();
		FlushErrorState();
		format_error(r, psprintf("the header is not valid JSON: %s%s%s%s", edata->message,
								 edata->detail ? " (" : "", edata->detail ? edata->detail : "",
								 edata->detail ? ")" : ""));
	}
	PG_END_TRY();
	return jb;
}

/* A JSON number that is a non-negative integer below 10^18, else false. */
static bool
json_to_int64(const JsonbValue *v, int64 *out)
{
	char	   *digits;
	size_t		len;

	if (v == NULL || v->type != jbvNumeric)
		return false;
	digits = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	len = strlen(digits);
	if (len == 0 || len > 18 || strspn(digits, "0123456789") != len)
		return false;
	*out = strtoi64(digits, NULL, 10);
	return true;
}

/* The container of a JSON array value, or NULL if v is not an array. */
static JsonbContainer *
json_array(const JsonbValue *v)
{
	if (v == NULL || v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		return NULL;
	return v->val.binary.data;
}

static JsonbValue *
json_field(JsonbContainer *object, const char *key)
{
	return getKeyJsonValueFromContainer(object, key, strlen(key), NULL);
}

static LlmFileDtype
parse_dtype(const StReader *r, const char *name, const JsonbValue *v, const char **dtype_name)
{
	static const struct
	{
		const char *name;
		LlmFileDtype dtype;
	}			known[] = {
		{"F32", LLM_FILE_F32}, {"F16", LLM_FILE_F16},
		{"BF16", LLM_FILE_BF16}, {"F64", LLM_FILE_F64},
	};
	char	   *s;

	if (v == NULL || v->type != jbvString)
		format_error(r, psprintf("tensor \"%s\" has no \"dtype\" string", name));
	s = pnstrdup(v->val.string.val, v->val.string.len);
	for (size_t i = 0; i < lengthof(known); i++)
		if (strcmp(s, known[i].name) == 0)
		{
			*dtype_name = known[i].name;
			return known[i].dtype;
		}
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s: tensor \"%s\" in \"%s\" has dtype %s, which is not supported",
					r->who, name, r->path, s),
			 errhint("Supported dtypes are F32, F16, BF16 and F64 (converted to float32).")));
}

/* "shape": [d0, d1, ...]; a 0-d scalar becomes shape [1]. */
static void
parse_shape(const StReader *r, StEntry *e, const JsonbValue *v)
{
	JsonbContainer *arr = json_array(v);

	if (arr == NULL)
		format_error(r, psprintf("tensor \"%s\" has no \"shape\" array", e->name));
	e->ndim = JsonContainerSize(arr);
	if (e->ndim > LLM_MAX_NDIM)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s: tensor \"%s\" in \"%s\" has %d dimensions; a tensor has at most %d",
						r->who, e->name, r->path, e->ndim, LLM_MAX_NDIM)));
	e->numel = 1;
	for (int i = 0; i < e->ndim; i++)
	{
		if (!json_to_int64(getIthJsonbValueFromContainer(arr, i), &e->dims[i]) ||
			e->dims[i] > PG_INT32_MAX)
			format_error(r, psprintf("tensor \"%s\": \"shape\" must hold integers from 0 to %d",
									 e->name, PG_INT32_MAX));
		if (pg_mul_s64_overflow(e->numel, e->dims[i], &e->numel))
			format_error(r, psprintf("tensor \"%s\": shape is too large", e->name));
	}
	if (e->ndim == 0)
	{
		e->ndim = 1;
		e->dims[0] = 1;
	}
	if (e->numel == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s: tensor \"%s\" in \"%s\" has shape %s; empty tensors are not supported",
						r->who, e->name, r->path, shape_str(e->ndim, e->dims))));
}

/* "data_offsets": [begin, end], inside a data section of `data_size` bytes. */
static void
parse_offsets(const StReader *r, StEntry *e, const JsonbValue *v, int64 data_size)
{
	JsonbContainer *arr = json_array(v);
	int64		nbytes;

	if (arr == NULL || JsonContainerSize(arr) != 2 ||
		!json_to_int64(getIthJsonbValueFromContainer(arr, 0), &e->begin) ||
		!json_to_int64(getIthJsonbValueFromContainer(arr, 1), &e->end))
		format_error(r, psprintf("tensor \"%s\" needs \"data_offsets\": [begin, end] with integers",
								 e->name));
	if (e->begin > e->end)
		format_error(r, psprintf("tensor \"%s\" has data_offsets [" INT64_FORMAT ", " INT64_FORMAT "] "
								 "with begin after end", e->name, e->begin, e->end));
	if (pg_mul_s64_overflow(e->numel, llm_dtype_size(e->dtype), &nbytes))
		format_error(r, psprintf("tensor \"%s\": shape is too large", e->name));
	if (e->end - e->begin != nbytes)
		format_error(r, psprintf("tensor \"%s\" has shape %s and dtype %s, so it needs " INT64_FORMAT
								 " bytes, but its data_offsets [" INT64_FORMAT ", " INT64_FORMAT "] span " INT64_FORMAT,
								 e->name, shape_str(e->ndim, e->dims), e->dtype_name,
								 nbytes, e->begin, e->end, e->end - e->begin));
	if (e->end > data_size)
		truncated_error(r, psprintf("tensor \"%s\" needs bytes up to " INT64_FORMAT " of the data section, "
									"which has only " INT64_FORMAT, e->name, e->end, data_size));
}

static void
parse_entry(const StReader *r, StEntry *e, const JsonbValue *v, int64 data_size)
{
	JsonbContainer *object;

	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		format_error(r, psprintf("the header entry \"%s\" is not a JSON object", e->name));
	object = v->val.binary.data;
	e->dtype = parse_dtype(r, e->name, json_field(object, "dtype"), &e->dtype_name);
	parse_shape(r, e, json_field(object, "shape"));
	parse_offsets(r, e, json_field(object, "data_offsets"), data_size);
}

static int
compare_begin(const void *a, const void *b)
{
	const StEntry *x = a;
	const StEntry *y = b;

	return (x->begin > y->begin) - (x->begin < y->begin);
}

/*
 * The data section is exactly the tensors, back to back: sorted by begin,
 * the first starts at 0, each starts where the one before ends, the last
 * ends at the end of the file (the reference implementation refuses anything
 * else: "file not fully covered").  A header length a few bytes short still
 * parses -- the JSON ends inside its padding -- but moves the data section:
 * only this check tells such a file from a good one.
 */
static void
check_coverage(const StReader *r, const StEntry *entries, int n, int64 data_start,
			   int64 data_size)
{
	int64		covered = 0;

	for (int i = 0; i <= n; i++)
	{
		int64		next = i < n ? entries[i].begin : data_size;

		if (i < n && next < covered)
			format_error(r, psprintf("tensors \"%s\" and \"%s\" overlap in the data section",
									 entries[i - 1].name, entries[i].name));
		if (next > covered)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("%s: invalid safetensors file \"%s\": bytes [" INT64_FORMAT ", " INT64_FORMAT
							") of the " INT64_FORMAT "-byte data section belong to no tensor",
							r->who, r->path, covered, next, data_size),
					 errdetail("The tensors' data_offsets must cover the data section exactly, "
							   "which starts after the header, at byte " INT64_FORMAT " of the file.",
							   data_start),
					 i == n ? errhint("Is the header length (the first 8 bytes) right?") : 0));
		if (i < n)
			covered = entries[i].end;
	}
}

/*
 * The tensors of the header, sorted by their place in the file (reading in
 * file order is the fast way through a big file).
 */
static StEntry *
parse_entries(const StReader *r, Jsonb *jb, int64 data_start, int64 data_size, int *count)
{
	StEntry    *entries;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	int			n = 0;

	if (!JB_ROOT_IS_OBJECT(jb))
		format_error(r, "the header is not a JSON object");
	entries = palloc0(sizeof(StEntry) * Max(JB_ROOT_COUNT(jb), 1));

	/* Walk the top-level keys; skipNested hands us each value whole. */
	it = JsonbIteratorInit(&jb->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;

		if (token != WJB_KEY)
			continue;			/* WJB_BEGIN_OBJECT / WJB_END_OBJECT */
		key = pnstrdup(v.val.string.val, v.val.string.len);
		token = JsonbIteratorNext(&it, &v, true);
		Assert(token == WJB_VALUE);
		if (strcmp(key, "__metadata__") == 0)
			continue;			/* free-form strings: nothing for us */
		entries[n].name = key;
		parse_entry(r, &entries[n], &v, data_size);
		n++;
	}

	qsort(entries, n, sizeof(StEntry), compare_begin);
	check_coverage(r, entries, n, data_start, data_size);
	*count = n;
	return entries;
}

/* Read and check the header; returns the tensors, sets where the data starts. */
static StEntry *
read_header(const StReader *r, LlmInFile *f, int *count, int64 *data_start)
{
	unsigned char len_bytes[8];
	uint64		header_len;
	char	   *header;

	if (f->size < 8)
		truncated_error(r, psprintf("it has " INT64_FORMAT " bytes, but starts with an 8-byte header length",
									f->size));
	llm_in_read(f, 0, len_bytes, 8, "the header length");
	header_len = llm_le64(len_bytes);
	if (header_len > ST_MAX_HEADER)
		format_error(r, psprintf("the header length " UINT64_FORMAT " is over the format's limit of %d bytes",
								 header_len, ST_MAX_HEADER));
	if ((int64) header_len > f->size - 8)
		truncated_error(r, psprintf("the header length is " UINT64_FORMAT " bytes, but only " INT64_FORMAT
									" bytes follow it", header_len, f->size - 8));

	header = palloc(header_len + 1);
	llm_in_read(f, 8, header, header_len, "the header");
	header[header_len] = '\0';
	if (memchr(header, '\0', header_len) != NULL)
		format_error(r, "the header contains a NUL byte");

	*data_start = 8 + (int64) header_len;
	return parse_entries(r, parse_json_header(r, header, (int) header_len),
						 *data_start, f->size - *data_start, count);
}

/* ---- llm_read_safetensors ------------------------------------------------------ */

/* A byte range of a file, read front to back (an LlmByteSource). */
typedef struct FileRange
{
	LlmByteSource base;
	LlmInFile  *file;
	int64		pos;
	const char *what;
} FileRange;

static void
file_range_read(LlmByteSource *src, void *buf, size_t len)
{
	FileRange  *range = (FileRange *) src;

	llm_in_read(range->file, range->pos, buf, len, range->what);
	range->pos += len;
}

/*
 * llm_read_safetensors(path text)
 *     RETURNS TABLE (name text, dtype text, shape int[], data tensor)
 */
PG_FUNCTION_INFO_V1(llm_read_safetensors);
Datum
llm_read_safetensors(PG_FUNCTION_ARGS)
{
	StReader	r = {"llm_read_safetensors", NULL};
	LlmInFile	f;
	StEntry    *entries;
	int			count;
	int64		data_start;

	llm_require_read_privilege(r.who);
	r.path = llm_absolute_path(r.who, PG_GETARG_TEXT_PP(0));
	llm_rows_begin(fcinfo);
	llm_in_open(&f, r.who, r.path);
	entries = read_header(&r, &f, &count, &data_start);

	for (int i = 0; i < count; i++)
	{
		StEntry    *e = &entries[i];
		Tensor	   *t = tensor_new(e->ndim, e->dims);
		FileRange	range = {{file_range_read}, &f, data_start + e->begin,
		psprintf("tensor \"%s\"", e->name)};

		llm_read_values(&range.base, e->dtype, false, t->data, e->numel);
		llm_rows_add(fcinfo, e->name, e->dtype_name, t);
	}
	llm_in_close(&f);
	return (Datum) 0;
}

/* ---- llm_write_safetensors ------------------------------------------------------ */

/* The query for `columns` of a model's parameters, in name order. */
static char *
params_in_order(const char *columns)
{
	return psprintf("SELECT %s FROM %s WHERE model = $1 ORDER BY name COLLATE \"C\"",
					columns, llm_table_name("llm_param"));
}

/* The names and shapes of a model's parameters, in name order (via SPI). */
static StEntry *
list_params(const char *who, const char *model, int *count)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(model)};
	StEntry    *entries;
	int64		offset = 0;

	if (SPI_execute_with_args(params_in_order("name, shape"), 1, argtypes, args,
							  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "%s: could not list the parameters of model \"%s\"", who, model);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("%s: model \"%s\" has no parameters in llm_param", who, model)));

	*count = (int) SPI_processed;
	entries = palloc0(sizeof(StEntry) * *count);
	for (int i = 0; i < *count; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		StEntry    *e = &entries[i];
		bool		isnull;
		int32	   *dims;

		e->name = SPI_getvalue(row, desc, 1);
		dims = int_array_values(who, "llm_param.shape",
								DatumGetArrayTypeP(SPI_getbinval(row, desc, 2, &isnull)), 1, &e->ndim);
		if (e->ndim < 1 || e->ndim > LLM_MAX_NDIM)
			elog(ERROR, "%s: parameter \"%s\" has %d dimensions", who, e->name, e->ndim);
		for (int d = 0; d < e->ndim; d++)
			e->dims[d] = dims[d];
		e->numel = tensor_check_shape(who, e->ndim, e->dims);
		e->dtype = LLM_FILE_F32;
		e->dtype_name = "F32";
		e->begin = offset;
		if (pg_add_s64_overflow(offset, e->numel * (int64) sizeof(float), &offset))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("%s: model \"%s\" is too large for a safetensors file", who, model)));
		e->end = offset;
	}
	return entries;
}

/* The JSON header, padded with spaces to a multiple of 8 bytes, in UTF-8. */
static StringInfo
build_header(const StEntry *entries, int count)
{
	StringInfo	json = makeStringInfo();
	StringInfo	header = makeStringInfo();

	appendStringInfoString(json, "{\"__metadata__\":{\"format\":\"pt\"}");
	for (int i = 0; i < count; i++)
	{
		const StEntry *e = &entries[i];

		appendStringInfoChar(json, ',');
		escape_json(json, e->name);
		appendStringInfo(json, ":{\"dtype\":\"%s\",\"shape\":[", e->dtype_name);
		for (int d = 0; d < e->ndim; d++)
			appendStringInfo(json, "%s" INT64_FORMAT, d ? "," : "", e->dims[d]);
		appendStringInfo(json, "],\"data_offsets\":[" INT64_FORMAT "," INT64_FORMAT "]}",
						 e->begin, e->end);
	}
	appendStringInfoChar(json, '}');

	appendStringInfoString(header, pg_server_to_any(json->data, json->len, PG_UTF8));
	while (header->len % 8 != 0)
		appendStringInfoChar(header, ' ');
	return header;
}

/* Write n floats as little-endian float32. */
static void
write_floats(LlmOutFile *out, const float *values, int64 n)
{
#ifdef WORDS_BIGENDIAN
	uint32		chunk[4096];

	for (int64 done = 0; done < n; done += lengthof(chunk))
	{
		int64		count = Min((int64) lengthof(chunk), n - done);

		for (int64 i = 0; i < count; i++)
		{
			uint32		w;

			memcpy(&w, values + done + i, 4);
			chunk[i] = pg_bswap32(w);
		}
		llm_out_write(out, chunk, count * 4);
	}
#else
	llm_out_write(out, values, n * sizeof(float));
#endif
}

/*
 * Stream the parameters through a cursor, one tensor in memory at a time,
 * checking each against the header already written.  Both queries run in
 * read-only SPI mode, so they see the same snapshot.
 */
static void
write_data(LlmOutFile *out, const char *model, const StEntry *entries, int count)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(model)};
	MemoryContext row_mcxt = AllocSetContextCreate(CurrentMemoryContext, "llm_write_safetensors row",
												   ALLOCSET_DEFAULT_SIZES);
	Portal		cursor = SPI_cursor_open_with_args(NULL, params_in_order("name, data"), 1, argtypes,
												   args, NULL, true, 0);

	for (int i = 0; i <= count; i++)
	{
		MemoryContext old;
		char	   *name;
		Tensor	   *t;
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(cursor, true, 1);
		if (i == count ? SPI_processed != 0 : SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("%s: the parameters of model \"%s\" changed during the export; try again",
							out->who, model)));
		if (i == count)
			break;

		old = MemoryContextSwitchTo(row_mcxt);
		name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		t = DatumGetTensorP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		if (strcmp(name, entries[i].name) != 0 || tensor_numel(t) != entries[i].numel)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("%s: the parameters of model \"%s\" changed during the export; try again",
							out->who, model)));
		write_floats(out, t->data, entries[i].numel);
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_mcxt);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(cursor);
	MemoryContextDelete(row_mcxt);
}

/* What write_safetensors() writes. */
typedef struct StFile
{
	const char *model;
	StEntry    *entries;
	int			count;
	StringInfo	header;
} StFile;

static void
write_safetensors(LlmOutFile *out, void *arg)
{
	StFile	   *f = arg;
	unsigned char len_bytes[8];

	for (int i = 0; i < 8; i++)
		len_bytes[i] = (unsigned char) ((uint64) f->header->len >> (8 * i));
	llm_out_write(out, len_bytes, 8);
	llm_out_write(out, f->header->data, f->header->len);
	write_data(out, f->model, f->entries, f->count);
}

/* llm_write_safetensors(path text, model text) RETURNS bigint: bytes written. */
PG_FUNCTION_INFO_V1(llm_write_safetensors);
Datum
llm_write_safetensors(PG_FUNCTION_ARGS)
{
	const char *who = "llm_write_safetensors";
	char	   *path;
	StFile		f = {.model = text_to_cstring(PG_GETARG_TEXT_PP(1))};
	int64		written;

	llm_require_write_privilege(who);
	path = llm_absolute_path(who, PG_GETARG_TEXT_PP(0));
	SPI_connect();
	f.entries = list_params(who, f.model, &f.count);
	f.header = build_header(f.entries, f.count);
	written = llm_write_file_atomically(who, path, write_safetensors, &f);
	SPI_finish();
	PG_RETURN_INT64(written);
}
