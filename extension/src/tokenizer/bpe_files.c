/*
 * bpe_files.c -- GPT-2's tokenizer files on the server:
 *
 *   pg_llm_load_bpe_vocab(path, model)    vocab.json: {"token": id, ...}
 *   pg_llm_load_bpe_merges(path, model)   merges.txt: "#version: 0.2", then
 *                                         one merge a line, "left right"
 *
 * Each replaces the model's rows of llm_bpe_vocab / llm_bpe_merges in one
 * statement: a bad file is an ERROR and the tables stay as they were.
 * Reading server files needs what COPY FROM a file needs (io/formats.h).
 *
 *   58P01 undefined_file                the file does not exist
 *   22P03 invalid_binary_representation the file breaks its format's rules
 *                                       (bad JSON or UTF-8, an id gap, a
 *                                       duplicate, a line of one part)
 *   XX001 data_corrupted                the file is empty, or vocab.json
 *                                       ends before its object does
 *
 * The rules are HuggingFace tokenizers' (BPE::from_file), stricter where
 * it would load something nonsensical: the ids must be exactly 0..n-1,
 * each token and each merge appears once, a merge has two non-empty parts.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"

#include "io/formats.h"
#include "support/support.h"
#include "tokenizer/bpe_tables.h"
#include "tokenizer/hash.h"
#include "tokenizer/utf8.h"

/* ---- the file ------------------------------------------------------------ */

typedef struct FileText
{
	const char *who;
	const char *path;
	const unsigned char *s;
	size_t		len;
} FileText;

/* The whole file, checked to be UTF-8. */
static FileText
read_file(const char *who, text *path_arg)
{
	FileText	f;
	LlmInFile	in;
	unsigned char *buf;
	int64		bad;

	llm_require_read_privilege(who);
	f.who = who;
	f.path = llm_absolute_path(who, path_arg);
	llm_in_open(&in, who, f.path);
	if (in.size == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("%s: file \"%s\" is empty", who, f.path)));
	if (in.size > (int64) MaxAllocSize - 1)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: file \"%s\" is larger than 1 GB", who, f.path)));
	buf = palloc(in.size + 1);
	llm_in_read(&in, 0, buf, in.size, "the file");
	llm_in_close(&in);
	buf[in.size] = '\0';
	f.s = buf;
	f.len = (size_t) in.size;

	bad = llm_utf8_invalid_at(f.s, f.len);
	if (bad >= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("%s: file \"%s\" is not valid UTF-8 (byte " INT64_FORMAT ")",
						who, f.path, bad)));
	return f;
}

/* ---- strings seen once --------------------------------------------------- */

typedef struct StringSet
{
	uint32	   *slots;			/* index + 1, 0 if free */
	uint32		mask;
	char	  **strings;		/* the caller's, by index */
} StringSet;

static void
set_init(StringSet *set, char **strings, int capacity)
{
	uint32		slots = 16;

	while (slots < (uint32) capacity * 2)
		slots <<= 1;
	set->mask = slots - 1;
	set->slots = palloc_extended(sizeof(uint32) * slots, MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	set->strings = strings;
}

/* Add strings[index]; if an equal string is there, return its index instead. */
static int
set_add(StringSet *set, int index)
{
	const char *s = set->strings[index];
	size_t		len = strlen(s);
	uint32		i = (uint32) llm_hash_bytes(s, len) & set->mask;

	for (;; i = (i + 1) & set->mask)
	{
		uint32		other = set->slots[i];

		if (other == 0)
		{
			set->slots[i] = (uint32) index + 1;
			return index;
		}
		if (strcmp(set->strings[other - 1], s) == 0)
			return (int) other - 1;
	}
}

/* ---- vocab.json ---------------------------------------------------------- */

typedef struct Json
{
	FileText	f;
	size_t		pos;
} Json;

static llm_noreturn void
json_error(Json *j, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("%s: file \"%s\" is not a valid vocab.json: %s at byte %zu",
					j->f.who, j->f.path, problem, j->pos),
			 errhint("vocab.json is one JSON object mapping each token to its id, "
					 "{\"!\": 0, \"\\\"\": 1, ...}.")));
}

static llm_noreturn void
json_truncated(Json *j)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("%s: file \"%s\" is truncated: it ends inside its JSON object",
					j->f.who, j->f.path)));
}

static void
json_space(Json *j)
{
	while (j->pos < j->f.len && (j->f.s[j->pos] == ' ' || j->f.s[j->pos] == '\t' ||
								 j->f.s[j->pos] == '\n' || j->f.s[j->pos] == '\r'))
		j->pos++;
}

/* The next character after white space; truncated if there is none. */
static unsigned char
json_peek(Json *j)
{
	json_space(j);
	if (j->pos >= j->f.len)
		json_truncated(j);
	return j->f.s[j->pos];
}

static uint32
json_hex4(Json *j)
{
	uint32		v = 0;

	for (int i = 0; i < 4; i++)
	{
		unsigned char c;

		if (j->pos >= j->f.len)
			json_truncated(j);
		c = j->f.s[j->pos];
		if (c >= '0' && c <= '9')
			v = v << 4 | (c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v << 4 | (c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v = v << 4 | (c - 'A' + 10);
		else
			json_error(j, "a \\u escape needs four hex digits");
		j->pos++;
	}
	return v;
}

/* A JSON string at j->pos (its opening quote), as a palloc'd UTF-8 string. */
static char *
json_string(Json *j)
{
	StringInfoData out;

	initStringInfo(&out);
	j->pos++;					/* the quote */
	for (;;)
	{
		unsigned char c;

		if (j->pos >= j->f.len)
			json_truncated(j);
		c = j->f.s[j->pos];
		if (c == '"')
		{
			j->pos++;
			return out.data;
		}
		if (c < 0x20)
			json_error(j, "a control character in a string must be escaped");
		if (c != '\\')
		{
			appendStringInfoChar(&out, (char) c);
			j->pos++;
			continue;
		}
		if (++j->pos >= j->f.len)
			json_truncated(j);
		c = j->f.s[j->pos++];
		switch (c)
		{
			case '"':
			case '\\':
			case '/':
				appendStringInfoChar(&out, (char) c);
				break;
			case 'b':
				appendStringInfoChar(&out, '\b');
				break;
			case 'f':
				appendStringInfoChar(&out, '\f');
				break;
			case 'n':
				appendStringInfoChar(&out, '\n');
				break;
			case 'r':
				appendStringInfoChar(&out, '\r');
				break;
			case 't':
				appendStringInfoChar(&out, '\t');
				break;
			case 'u':
				{
					uint32		cp = json_hex4(j);

					if (cp >= 0xDC00 && cp <= 0xDFFF)
						json_error(j, "a \\u escape is a lone low surrogate");
					if (cp >= 0xD800 && cp <= 0xDBFF)
					{
						uint32		low;

						if (j->pos + 2 > j->f.len)
							json_truncated(j);
						if (j->f.s[j->pos] != '\\' || j->f.s[j->pos + 1] != 'u')
							json_error(j, "a \\u escape is a lone high surrogate");
						j->pos += 2;
						low = json_hex4(j);
						if (low < 0xDC00 || low > 0xDFFF)
							json_error(j, "a \\u escape is a lone high surrogate");
						cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
					}
					if (cp == 0)
						json_error(j, "a token holds \\u0000, which text cannot");
					llm_utf8_append_char(&out, cp);
					break;
				}
			default:
				j->pos--;
				json_error(j, "an unknown escape in a string");
		}
	}
}

/* A token id at j->pos: a non-negative JSON integer that fits int32. */
static int32
json_id(Json *j)
{
	int64		v = 0;
	size_t		start = j->pos;
	unsigned char c = j->f.s[j->pos];

	if (c == '-')
		json_error(j, "an id is negative");
	if (c < '0' || c > '9')
		json_error(j, "an id must be an integer");
	while (j->pos < j->f.len && j->f.s[j->pos] >= '0' && j->f.s[j->pos] <= '9')
	{
		v = v * 10 + (j->f.s[j->pos] - '0');
		if (v > PG_INT32_MAX)
			json_error(j, "an id is too large");
		j->pos++;
	}
	if (j->f.s[start] == '0' && j->pos - start > 1)
	{
		j->pos = start;
		json_error(j, "a number has a leading zero");
	}
	if (j->pos < j->f.len && (j->f.s[j->pos] == '.' || j->f.s[j->pos] == 'e' ||
							  j->f.s[j->pos] == 'E'))
		json_error(j, "an id must be an integer");
	return (int32) v;
}

/* Parse vocab.json: tokens[id] for ids 0..n-1. */
static char **
parse_vocab(FileText f, int *n_tokens)
{
	Json		j = {f, 0};
	char	  **tokens = palloc(sizeof(char *) * 1024);
	int32	   *ids = palloc(sizeof(int32) * 1024);
	int			capacity = 1024;
	int			n = 0;
	char	  **by_id;
	StringSet	set;

	if (json_peek(&j) != '{')
		json_error(&j, "the file is not a JSON object");
	j.pos++;
	if (json_peek(&j) == '}')
		j.pos++;
	else
		for (;;)
		{
			if (json_peek(&j) != '"')
				json_error(&j, "expected a token (a string)");
			if (n == capacity)
			{
				capacity *= 2;
				tokens = repalloc_huge(tokens, sizeof(char *) * capacity);
				ids = repalloc_huge(ids, sizeof(int32) * capacity);
			}
			tokens[n] = json_string(&j);
			if (tokens[n][0] == '\0')
				json_error(&j, "a token is empty");
			if (json_peek(&j) != ':')
				json_error(&j, "expected ':' after a token");
			j.pos++;
			json_peek(&j);
			ids[n++] = json_id(&j);
			if (json_peek(&j) == ',')
			{
				j.pos++;
				continue;
			}
			if (j.f.s[j.pos] != '}')
				json_error(&j, "expected ',' or '}' after an id");
			j.pos++;
			break;
		}
	json_space(&j);
	if (j.pos < j.f.len)
		json_error(&j, "there is more after the JSON object");
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("%s: file \"%s\" has no tokens", f.who, f.path)));

	/* each token once; the ids exactly 0..n-1 */
	set_init(&set, tokens, n);
	by_id = palloc_extended(sizeof(char *) * n, MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	for (int i = 0; i < n; i++)
	{
		int			same = set_add(&set, i);

		if (same != i)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("%s: file \"%s\" lists the token \"%s\" twice (ids %d and %d)",
							f.who, f.path, tokens[i], ids[same], ids[i])));
		if (ids[i] >= n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("%s: file \"%s\" has %d tokens, so their ids must be 0..%d, "
							"but \"%s\" has id %d",
							f.who, f.path, n, n - 1, tokens[i], ids[i]),
					 errdetail("Ids with gaps cannot be rows of an embedding matrix.")));
		if (by_id[ids[i]] != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("%s: file \"%s\" gives id %d to both \"%s\" and \"%s\"",
							f.who, f.path, ids[i], by_id[ids[i]], tokens[i])));
		by_id[ids[i]] = tokens[i];
	}
	*n_tokens = n;
	return by_id;
}

/* ---- merges.txt ------------------------------------------------------------ */

static llm_noreturn void
merges_error(FileText f, int line, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("%s: file \"%s\" is not a valid merges.txt: line %d %s",
					f.who, f.path, line, problem),
			 errhint("merges.txt has a line \"#version: 0.2\", then one merge a line: "
					 "two tokens and one space, \"\\u0120 t\".")));
}

/* Parse merges.txt into left[i], right[i] (rank i). */
static int
parse_merges(FileText f, char ***left_out, char ***right_out)
{
	int			capacity = 1024;
	char	  **left = palloc(sizeof(char *) * capacity);
	char	  **right = palloc(sizeof(char *) * capacity);
	int		   *line_of = palloc(sizeof(int) * capacity);
	char	  **joined;
	StringSet	set;
	size_t		pos = 0;
	int			line = 0;
	int			n = 0;

	while (pos < f.len)
	{
		const unsigned char *start = f.s + pos;
		const unsigned char *eol = memchr(start, '\n', f.len - pos);
		size_t		len = eol ? (size_t) (eol - start) : f.len - pos;
		const unsigned char *space;

		pos += len + (eol ? 1 : 0);
		line++;
		if (len > 0 && start[len - 1] == '\r')
			len--;
		if (len >= 8 && memcmp(start, "#version", 8) == 0)
			continue;

		space = memchr(start, ' ', len);
		if (space == NULL)
			merges_error(f, line, len == 0 ? "is empty" : "has one part");
		if (memchr(space + 1, ' ', len - (space + 1 - start)) != NULL)
			merges_error(f, line, "has more than two parts");
		if (space == start || space + 1 == start + len)
			merges_error(f, line, "has an empty part");
		if (memchr(start, '\0', len) != NULL)
			merges_error(f, line, "holds a NUL byte");

		if (n == capacity)
		{
			capacity *= 2;
			left = repalloc_huge(left, sizeof(char *) * capacity);
			right = repalloc_huge(right, sizeof(char *) * capacity);
			line_of = repalloc_huge(line_of, sizeof(int) * capacity);
		}
		left[n] = pnstrdup((const char *) start, space - start);
		right[n] = pnstrdup((const char *) space + 1, len - (space + 1 - start));
		line_of[n] = line;
		n++;
	}

	/* each merge once: "left right" as one string is the key */
	joined = palloc_extended(sizeof(char *) * Max(n, 1), MCXT_ALLOC_HUGE);
	for (int i = 0; i < n; i++)
		joined[i] = psprintf("%s %s", left[i], right[i]);
	set_init(&set, joined, n);
	for (int i = 0; i < n; i++)
	{
		int			same = set_add(&set, i);

		if (same != i)
			merges_error(f, line_of[i], psprintf("repeats the merge \"%s\" of line %d",
												 joined[i], line_of[same]));
	}
	*left_out = left;
	*right_out = right;
	return n;
}

/* ---- SQL ------------------------------------------------------------------ */

/* pg_llm_load_bpe_vocab(path text, model text) RETURNS int: the tokens loaded */
PG_FUNCTION_INFO_V1(pg_llm_load_bpe_vocab);
Datum
pg_llm_load_bpe_vocab(PG_FUNCTION_ARGS)
{
	FileText	f = read_file("pg_llm_load_bpe_vocab", PG_GETARG_TEXT_PP(0));
	int			n;
	char	  **tokens = parse_vocab(f, &n);

	llm_store_vocab(text_to_cstring(PG_GETARG_TEXT_PP(1)), tokens, n);
	PG_RETURN_INT32(n);
}

/* pg_llm_load_bpe_merges(path text, model text) RETURNS int: the merges loaded */
PG_FUNCTION_INFO_V1(pg_llm_load_bpe_merges);
Datum
pg_llm_load_bpe_merges(PG_FUNCTION_ARGS)
{
	FileText	f = read_file("pg_llm_load_bpe_merges", PG_GETARG_TEXT_PP(0));
	char	  **left;
	char	  **right;
	int			n = parse_merges(f, &left, &right);

	llm_store_merges(text_to_cstring(PG_GETARG_TEXT_PP(1)), left, right, n);
	PG_RETURN_INT32(n);
}
