/*
 * byte_level.c -- GPT-2's byte-level alphabet (see byte_level.h), and its
 * SQL functions llm_bpe_token_bytes(text) and llm_bpe_bytes_token(bytea).
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"

/* Bytes that stand for themselves: '!'..'~', '¡'..'¬', '®'..'ÿ'. */
static inline bool
is_printable(int b)
{
	return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* Filled on first use: byte -> code point, and the alphabet order. */
static uint32 byte_char[256];
static unsigned char rank_byte[256];
static int	byte_rank[256];
static bool tables_ready = false;

static void
build_tables(void)
{
	int			rank = 0;
	int			extra = 0;

	for (int b = 0; b < 256; b++)
		if (is_printable(b))
		{
			byte_char[b] = (uint32) b;
			rank_byte[rank++] = (unsigned char) b;
		}
	for (int b = 0; b < 256; b++)
		if (!is_printable(b))
		{
			byte_char[b] = 256 + extra++;
			rank_byte[rank++] = (unsigned char) b;
		}
	for (int r = 0; r < 256; r++)
		byte_rank[rank_byte[r]] = r;
	tables_ready = true;
}

uint32
llm_byte_char(unsigned char b)
{
	if (!tables_ready)
		build_tables();
	return byte_char[b];
}

int
llm_char_byte(uint32 cp)
{
	if (cp < 256)
		return is_printable((int) cp) ? (int) cp : -1;
	if (!tables_ready)
		build_tables();
	if (cp >= 256 + 68)
		return -1;
	/* U+0100 + k stands for the k-th byte that is not printable */
	return rank_byte[(256 - 68) + (cp - 256)];
}

unsigned char
llm_alphabet_byte(int rank)
{
	if (!tables_ready)
		build_tables();
	return rank_byte[rank];
}

int
llm_byte_rank(unsigned char b)
{
	if (!tables_ready)
		build_tables();
	return byte_rank[b];
}

bool
llm_token_bytes(StringInfo out, const char *token, int len)
{
	const unsigned char *s = (const unsigned char *) token;
	bool		all_bytes = true;
	int			pos = 0;

	while (pos < len)
	{
		int			width = pg_utf_mblen(s + pos);
		uint32		cp;
		int			b;

		if (width > len - pos)
			width = len - pos;	/* not valid UTF-8: keep the bytes as they are */
		cp = utf8_to_unicode(s + pos);
		b = llm_char_byte(cp);
		if (b >= 0)
			appendStringInfoChar(out, (char) b);
		else
		{
			appendBinaryStringInfo(out, token + pos, width);
			all_bytes = false;
		}
		pos += width;
	}
	return all_bytes;
}

void
llm_bytes_token(StringInfo out, const unsigned char *bytes, int len)
{
	for (int i = 0; i < len; i++)
		llm_utf8_append_char(out, llm_byte_char(bytes[i]));
}

/* ---- SQL ------------------------------------------------------------------ */

/*
 * llm_bpe_token_bytes(token text) RETURNS bytea: the bytes a token stands
 * for ('Ġthe' -> ' the').  llm_bpe_vocab.bytes is generated with it.
 */
PG_FUNCTION_INFO_V1(llm_bpe_token_bytes_sql);
Datum
llm_bpe_token_bytes_sql(PG_FUNCTION_ARGS)
{
	text	   *token = PG_GETARG_TEXT_PP(0);
	StringInfoData buf;
	char	   *utf8;
	int			len = VARSIZE_ANY_EXHDR(token);

	utf8 = pg_server_to_any(VARDATA_ANY(token), len, PG_UTF8);
	if (utf8 != VARDATA_ANY(token))
		len = strlen(utf8);
	initStringInfo(&buf);
	llm_token_bytes(&buf, utf8, len);
	PG_RETURN_BYTEA_P(cstring_to_text_with_len(buf.data, buf.len));
}

/* llm_bpe_bytes_token(bytes bytea) RETURNS text: the token text of some bytes. */
PG_FUNCTION_INFO_V1(llm_bpe_bytes_token_sql);
Datum
llm_bpe_bytes_token_sql(PG_FUNCTION_ARGS)
{
	bytea	   *bytes = PG_GETARG_BYTEA_PP(0);
	StringInfoData buf;
	char	   *server;

	initStringInfo(&buf);
	llm_bytes_token(&buf, (const unsigned char *) VARDATA_ANY(bytes), VARSIZE_ANY_EXHDR(bytes));
	server = pg_any_to_server(buf.data, buf.len, PG_UTF8);
	PG_RETURN_TEXT_P(cstring_to_text(server));
}
