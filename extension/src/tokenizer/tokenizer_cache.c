/*
 * tokenizer_cache.c -- llm_tokenizer_get(): a model's vocabulary and merges,
 * read from llm_bpe_vocab and llm_bpe_merges once and kept in backend memory.
 *
 * The cache is keyed like the GPT-2 weight cache (gpt2/model_cache.c):
 * by llm_tokenizer.version, which statement triggers on the two tables
 * bump from a sequence on every write, and by llm_tokenizer's OID (a new
 * CREATE EXTENSION starts the sequence over).  The version and the rows are
 * read through one snapshot (read-only SPI), so the cached tokenizer is
 * exactly the one its version names.  A few tokenizers stay cached at once,
 * the least recently used going first.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

#include "support/support.h"
#include "tokenizer/bpe.h"
#include "tokenizer/bpe_tables.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/hash.h"

#define MAX_CACHED 4
#define EOT_TOKEN "<|endoftext|>"

/* ---- token text -> id, while building ---------------------------------- */

typedef struct TokenIndex
{
	uint32	   *slots;			/* id + 1, 0 if free */
	uint32		mask;
	char	  **text;			/* token text by id */
	int		   *len;
} TokenIndex;

static void
index_init(TokenIndex *ix, int n)
{
	uint32		slots = 16;

	while (slots < (uint32) n * 2)
		slots <<= 1;
	ix->mask = slots - 1;
	ix->slots = palloc0(sizeof(uint32) * slots);
	ix->text = palloc(sizeof(char *) * Max(n, 1));
	ix->len = palloc(sizeof(int) * Max(n, 1));
}

/* The id of token text s (len bytes), or -1; *slot is where it would go. */
static int32
index_find(const TokenIndex *ix, const char *s, int len, uint32 *slot)
{
	uint32		i = (uint32) llm_hash_bytes(s, len) & ix->mask;

	for (;; i = (i + 1) & ix->mask)
	{
		uint32		id1 = ix->slots[i];

		if (id1 == 0)
		{
			if (slot)
				*slot = i;
			return -1;
		}
		if (ix->len[id1 - 1] == len && memcmp(ix->text[id1 - 1], s, len) == 0)
			return (int32) id1 - 1;
	}
}

/* ---- reading the tables -------------------------------------------------- */

/* llm_tokenizer's OID and the model's version; false if it has no row. */
static bool
read_version(const char *model, Oid *relid, int64 *version)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(model);
	bool		isnull;
	int			ret;

	ret = SPI_execute_with_args(psprintf("SELECT tableoid, version FROM %s WHERE model = $1",
										 llm_table_name("llm_tokenizer")),
								1, &argtype, &arg, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: reading llm_tokenizer failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return false;
	*relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

static void
select_rows(const char *sql, const char *model)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(model);
	int			ret = SPI_execute_with_args(sql, 1, &argtype, &arg, NULL, true, 0);

	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_llm: \"%s\" failed: %s", sql, SPI_result_code_string(ret));
}

static text *
text_column(int row, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);

	return isnull ? NULL : DatumGetTextPP(d);
}

static llm_noreturn void
bad_tokenizer(const char *model, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("tokenizer \"%s\" is inconsistent: %s", model, detail),
			 errhint("Load vocab.json and merges.txt that belong together "
					 "(pg_llm_load_bpe), or train one with llm_bpe_train.")));
}

/* The vocabulary: token bytes for decoding, token text -> id for the merges. */
static void
load_vocab(LlmTokenizer *tok, TokenIndex *ix)
{
	int			n;
	uint64		total = 0;

	select_rows(psprintf("SELECT id, token, bytes FROM %s WHERE model = $1 ORDER BY id",
						 llm_table_name("llm_bpe_vocab")), tok->model);
	n = (int) SPI_processed;
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("tokenizer \"%s\" has no vocabulary", tok->model),
				 errhint("Load one with pg_llm_load_bpe_vocab(path, model), or train one with llm_bpe_train.")));

	for (int i = 0; i < n; i++)
		total += VARSIZE_ANY_EXHDR(text_column(i, 3));
	if (total > MaxAllocSize)
		bad_tokenizer(tok->model, "its tokens are longer than 1 GB in all");

	tok->n_vocab = n;
	tok->offsets = MemoryContextAlloc(tok->mcxt, sizeof(uint32) * (n + 1));
	tok->bytes = MemoryContextAlloc(tok->mcxt, Max(total, 1));
	index_init(ix, n);
	tok->offsets[0] = 0;
	for (int i = 0; i < n; i++)
	{
		bool		isnull;
		int32		id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		text	   *token = text_column(i, 2);
		text	   *bytes = text_column(i, 3);
		int			blen = VARSIZE_ANY_EXHDR(bytes);
		uint32		slot;

		if (id != i)
			bad_tokenizer(tok->model, psprintf("its ids must be 0..%d without gaps, but id %d is missing",
											   n - 1, i));
		memcpy(tok->bytes + tok->offsets[i], VARDATA_ANY(bytes), blen);
		tok->offsets[i + 1] = tok->offsets[i] + blen;

		ix->text[i] = VARDATA_ANY(token);
		ix->len[i] = VARSIZE_ANY_EXHDR(token);
		if (index_find(ix, ix->text[i], ix->len[i], &slot) >= 0)
			bad_tokenizer(tok->model, "a token appears twice");	/* the primary key forbids it */
		ix->slots[slot] = (uint32) i + 1;
	}

	/* the 256 byte tokens: BPE starts from them */
	for (int b = 0; b < 256; b++)
	{
		unsigned char byte = (unsigned char) b;
		StringInfoData ch;

		initStringInfo(&ch);
		llm_bytes_token(&ch, &byte, 1);
		tok->byte_id[b] = index_find(ix, ch.data, ch.len, NULL);
		if (tok->byte_id[b] < 0)
			bad_tokenizer(tok->model, psprintf("it has no token for byte 0x%02X (\"%s\")", b, ch.data));
		pfree(ch.data);
	}
}

/* The merges, and which tokens they make: the others are special tokens. */
static void
load_merges(LlmTokenizer *tok, TokenIndex *ix)
{
	bool	   *made = palloc0(sizeof(bool) * tok->n_vocab);
	StringInfoData joined;
	MemoryContext old;
	int			n;

	select_rows(psprintf("SELECT rank, \"left\", \"right\" FROM %s WHERE model = $1 ORDER BY rank",
						 llm_table_name("llm_bpe_merges")), tok->model);
	n = (int) SPI_processed;
	tok->n_merges = n;
	old = MemoryContextSwitchTo(tok->mcxt);
	llm_merge_table_init(&tok->merges, n);
	MemoryContextSwitchTo(old);
	initStringInfo(&joined);
	for (int b = 0; b < 256; b++)
		made[tok->byte_id[b]] = true;

	for (int i = 0; i < n; i++)
	{
		bool		isnull;
		int32		rank = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		text	   *left = text_column(i, 2);
		text	   *right = text_column(i, 3);
		int32		left_id = index_find(ix, VARDATA_ANY(left), VARSIZE_ANY_EXHDR(left), NULL);
		int32		right_id = index_find(ix, VARDATA_ANY(right), VARSIZE_ANY_EXHDR(right), NULL);
		int32		merged_id;

		resetStringInfo(&joined);
		appendBinaryStringInfo(&joined, VARDATA_ANY(left), VARSIZE_ANY_EXHDR(left));
		appendBinaryStringInfo(&joined, VARDATA_ANY(right), VARSIZE_ANY_EXHDR(right));
		merged_id = index_find(ix, joined.data, joined.len, NULL);
		if (left_id < 0 || right_id < 0 || merged_id < 0)
			bad_tokenizer(tok->model,
						  psprintf("merge %d (\"%s\" \"%s\") needs the token \"%s\", which is not in its vocabulary",
								   rank, text_to_cstring(left), text_to_cstring(right),
								   left_id < 0 ? text_to_cstring(left) :
								   right_id < 0 ? text_to_cstring(right) : joined.data));
		if (!llm_merge_table_add(&tok->merges, left_id, right_id, rank, merged_id))
			bad_tokenizer(tok->model, psprintf("the merge \"%s\" \"%s\" appears twice",
											   text_to_cstring(left), text_to_cstring(right)));
		made[merged_id] = true;
	}

	/* Special tokens: in the vocabulary, but no merge makes them. */
	tok->special_ids = MemoryContextAlloc(tok->mcxt, sizeof(int32) * Max(tok->n_vocab - 256, 1));
	tok->n_special = 0;
	tok->eot_id = -1;
	for (int32 id = 0; id < tok->n_vocab; id++)
	{
		if (made[id])
			continue;
		tok->special_ids[tok->n_special++] = id;
		if (ix->len[id] == strlen(EOT_TOKEN) && memcmp(ix->text[id], EOT_TOKEN, ix->len[id]) == 0)
			tok->eot_id = id;
	}
}

/*
 * Build the tokenizer in a new memory context, a child of `parent`: should
 * an error interrupt us, it goes away with the transaction's memory.
 */
static LlmTokenizer *
build_tokenizer(MemoryContext parent, const char *model, Oid relid, int64 version)
{
	MemoryContext mcxt = AllocSetContextCreate(parent, "pg_llm tokenizer",
											   ALLOCSET_DEFAULT_SIZES);
	LlmTokenizer *tok = MemoryContextAllocZero(mcxt, sizeof(LlmTokenizer));
	TokenIndex	ix;

	tok->mcxt = mcxt;
	tok->model = MemoryContextStrdup(mcxt, model);
	tok->relid = relid;
	tok->version = version;

	/* What is kept goes in mcxt; the rows and the text index in SPI's memory. */
	load_vocab(tok, &ix);
	load_merges(tok, &ix);
	return tok;
}

/* ---- the cache ---------------------------------------------------------- */

static LlmTokenizer *cached[MAX_CACHED];
static uint64 last_used[MAX_CACHED];
static uint64 use_clock = 0;
static int64 cache_loads = 0;

static void
drop(int i)
{
	LlmTokenizer *tok = cached[i];

	cached[i] = NULL;			/* first, so that no error can leave it dangling */
	if (tok != NULL)
		MemoryContextDelete(tok->mcxt);
}

void
llm_tokenizer_cache_clear(void)
{
	for (int i = 0; i < MAX_CACHED; i++)
		drop(i);
}

const LlmTokenizer *
llm_tokenizer_get(const char *model)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			relid;
	int64		version;
	int			slot = 0;
	LlmTokenizer *tok;

	SPI_connect();
	if (!read_version(model, &relid, &version))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown tokenizer \"%s\"", model),
				 errhint("Load GPT-2's files with pg_llm_load_bpe(vocab_path, merges_path, model), "
						 "or train one with llm_bpe_train(model, corpus_query, vocab_size).")));

	for (int i = 0; i < MAX_CACHED; i++)
	{
		tok = cached[i];
		if (tok == NULL || strcmp(tok->model, model) != 0)
			continue;
		if (tok->relid == relid && tok->version == version)
		{
			last_used[i] = ++use_clock;
			SPI_finish();
			return tok;
		}
		drop(i);				/* an older version of it */
	}

	/* a free slot, else the least recently used */
	for (int i = 0; i < MAX_CACHED; i++)
	{
		if (cached[i] == NULL)
		{
			slot = i;
			break;
		}
		if (last_used[i] < last_used[slot])
			slot = i;
	}
	drop(slot);

	tok = build_tokenizer(caller, model, relid, version);
	SPI_finish();

	/* Built completely: now it may outlive this call and this transaction. */
	MemoryContextSetParent(tok->mcxt, TopMemoryContext);
	cached[slot] = tok;
	last_used[slot] = ++use_clock;
	cache_loads++;
	return tok;
}

/* ---- SQL ------------------------------------------------------------------ */

/*
 * llm_tokenizer_cache() RETURNS TABLE (model text, version bigint,
 * vocab_size int, merges int, cached_pieces int, loads bigint): the
 * tokenizers this backend holds; loads counts how often it built one.
 */
PG_FUNCTION_INFO_V1(llm_tokenizer_cache_sql);
Datum
llm_tokenizer_cache_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < MAX_CACHED; i++)
	{
		LlmTokenizer *tok = cached[i];
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		if (tok == NULL)
			continue;
		values[0] = CStringGetTextDatum(tok->model);
		values[1] = Int64GetDatum(tok->version);
		values[2] = Int32GetDatum(tok->n_vocab);
		values[3] = Int32GetDatum(tok->n_merges);
		values[4] = Int32GetDatum((int32) tok->words.n_entries);
		values[5] = Int64GetDatum(cache_loads);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* llm_tokenizer_cache_clear(): free the cached tokenizers now. */
PG_FUNCTION_INFO_V1(llm_tokenizer_cache_clear_sql);
Datum
llm_tokenizer_cache_clear_sql(PG_FUNCTION_ARGS)
{
	llm_tokenizer_cache_clear();
	PG_RETURN_VOID();
}
