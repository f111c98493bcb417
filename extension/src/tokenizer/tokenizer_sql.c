/*
 * tokenizer_sql.c -- the tokenizer's SQL functions: llm_encode, llm_decode,
 * llm_decode_bytes, llm_decode_stream, llm_pretokenize, llm_tokenizer_info.
 *
 * Text arrives in the database encoding and is converted to UTF-8 (the
 * tokenizer's bytes are UTF-8's), and back on the way out.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "tensor/tensor.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

/* A 1-D int[] of the ids. */
static ArrayType *
int_array(const int32 *ids, int n)
{
	Size		nbytes = ARR_OVERHEAD_NONULLS(1) + sizeof(int32) * (Size) n;
	ArrayType  *a;

	if (n == 0)
		return construct_empty_array(INT4OID);
	a = palloc_extended(nbytes, MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	SET_VARSIZE(a, nbytes);
	a->ndim = 1;
	a->dataoffset = 0;
	a->elemtype = INT4OID;
	ARR_DIMS(a)[0] = n;
	ARR_LBOUND(a)[0] = 1;
	memcpy(ARR_DATA_PTR(a), ids, sizeof(int32) * (Size) n);
	return a;
}

/* The text argument as UTF-8, *len bytes. */
static const char *
utf8_arg(text *t, size_t *len)
{
	const char *s = VARDATA_ANY(t);
	int			n = VARSIZE_ANY_EXHDR(t);
	const char *utf8 = pg_server_to_any(s, n, PG_UTF8);

	*len = utf8 == s ? (size_t) n : strlen(utf8);
	return utf8;
}

/* UTF-8 text (no NUL) as a text value in the database encoding. */
static text *
text_result(const char *utf8, int len)
{
	const char *server = pg_any_to_server(utf8, len, PG_UTF8);

	return cstring_to_text_with_len(server, server == utf8 ? len : (int) strlen(server));
}

/* llm_encode(input text, model text, allow_special boolean) RETURNS int[] */
PG_FUNCTION_INFO_V1(llm_encode_sql);
Datum
llm_encode_sql(PG_FUNCTION_ARGS)
{
	size_t		len;
	const char *utf8 = utf8_arg(PG_GETARG_TEXT_PP(0), &len);
	const LlmTokenizer *tok = llm_tokenizer_get(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	int			n;
	int32	   *ids = llm_bpe_encode(tok, utf8, len, PG_GETARG_BOOL(2), &n);

	PG_RETURN_ARRAYTYPE_P(int_array(ids, n));
}

static int32 *
ids_arg(FunctionCallInfo fcinfo, const char *who, int *n)
{
	return int_array_values(who, "ids", PG_GETARG_ARRAYTYPE_P(0), 1, n);
}

/* llm_decode(ids int[], model text) RETURNS text: U+FFFD where the bytes are not UTF-8 */
PG_FUNCTION_INFO_V1(llm_decode_sql);
Datum
llm_decode_sql(PG_FUNCTION_ARGS)
{
	int			n;
	int32	   *ids = ids_arg(fcinfo, "llm_decode", &n);
	const LlmTokenizer *tok = llm_tokenizer_get(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	StringInfoData out;

	initStringInfo(&out);
	llm_bpe_decode_text(tok, ids, n, &out);
	PG_RETURN_TEXT_P(text_result(out.data, out.len));
}

/* llm_decode_bytes(ids int[], model text) RETURNS bytea: the bytes, exactly */
PG_FUNCTION_INFO_V1(llm_decode_bytes_sql);
Datum
llm_decode_bytes_sql(PG_FUNCTION_ARGS)
{
	int			n;
	int32	   *ids = ids_arg(fcinfo, "llm_decode_bytes", &n);
	const LlmTokenizer *tok = llm_tokenizer_get(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	StringInfoData out;

	llm_bpe_check_ids(tok, "llm_decode_bytes", ids, n);
	initStringInfo(&out);
	llm_bpe_decode_bytes(tok, ids, n, &out);
	PG_RETURN_BYTEA_P(cstring_to_text_with_len(out.data, out.len));
}

/*
 * llm_decode_stream(ids int[], model text) RETURNS text[]: element i is the
 * text that token i completes, as a streaming decoder emits it (only whole
 * characters); the last element also holds what is left at the end.
 */
PG_FUNCTION_INFO_V1(llm_decode_stream_sql);
Datum
llm_decode_stream_sql(PG_FUNCTION_ARGS)
{
	int			n;
	int32	   *ids = ids_arg(fcinfo, "llm_decode_stream", &n);
	const LlmTokenizer *tok = llm_tokenizer_get(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	Datum	   *pieces = palloc(sizeof(Datum) * Max(n, 1));
	LlmBpeStream stream;
	StringInfoData out;

	llm_bpe_check_ids(tok, "llm_decode_stream", ids, n);
	llm_bpe_stream_init(&stream, tok);
	initStringInfo(&out);
	for (int i = 0; i < n; i++)
	{
		resetStringInfo(&out);
		llm_bpe_stream_push(&stream, ids[i], &out);
		if (i == n - 1)
			llm_bpe_stream_finish(&stream, &out);
		pieces[i] = PointerGetDatum(text_result(out.data, out.len));
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(pieces, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* llm_pretokenize(input text) RETURNS text[]: the pieces of GPT-2's pre-tokenizer */
PG_FUNCTION_INFO_V1(llm_pretokenize_sql);
Datum
llm_pretokenize_sql(PG_FUNCTION_ARGS)
{
	size_t		len;
	const char *utf8 = utf8_arg(PG_GETARG_TEXT_PP(0), &len);
	ArrayBuildState *pieces = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	size_t		pos = 0;

	while (pos < len)
	{
		size_t		n = llm_gpt2_piece_len((const unsigned char *) utf8 + pos, len - pos);

		accumArrayResult(pieces, PointerGetDatum(text_result(utf8 + pos, (int) n)),
						 false, TEXTOID, CurrentMemoryContext);
		pos += n;
	}
	if (len == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));
	PG_RETURN_DATUM(makeArrayResult(pieces, CurrentMemoryContext));
}

/*
 * llm_tokenizer_info(model text, OUT vocab_size int, OUT merges int,
 * OUT eot_id int, OUT special_tokens text[], OUT version bigint): loads
 * the tokenizer (so checks it) and describes it.
 */
PG_FUNCTION_INFO_V1(llm_tokenizer_info_sql);
Datum
llm_tokenizer_info_sql(PG_FUNCTION_ARGS)
{
	const LlmTokenizer *tok = llm_tokenizer_get(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	TupleDesc	desc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	int			n_special;
	const int32 *special = llm_tokenizer_special_ids(tok, &n_special);
	Datum	   *names = palloc(sizeof(Datum) * Max(n_special, 1));

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "llm_tokenizer_info: return type must be a row type");
	desc = BlessTupleDesc(desc);

	for (int i = 0; i < n_special; i++)
	{
		int			len;
		const unsigned char *b = llm_bpe_token_bytes(tok, special[i], &len);
		StringInfoData t;

		initStringInfo(&t);
		llm_utf8_append_lossy(&t, b, len, true);
		names[i] = PointerGetDatum(text_result(t.data, t.len));
	}
	values[0] = Int32GetDatum(llm_tokenizer_vocab_size(tok));
	values[1] = Int32GetDatum(llm_tokenizer_merges(tok));
	values[2] = Int32GetDatum(llm_tokenizer_eot_id(tok));
	nulls[2] = llm_tokenizer_eot_id(tok) < 0;
	values[3] = PointerGetDatum(construct_array(names, n_special, TEXTOID, -1, false, TYPALIGN_INT));
	values[4] = Int64GetDatum(llm_tokenizer_version(tok));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
