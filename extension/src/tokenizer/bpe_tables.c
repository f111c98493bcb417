/*
 * bpe_tables.c -- writing the tokenizer's tables (see bpe_tables.h).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "support/support.h"
#include "tokenizer/bpe_tables.h"

/* A text[] of n UTF-8 strings, converted to the database encoding. */
static ArrayType *
text_array(char **strings, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = CStringGetTextDatum(pg_any_to_server(strings[i], strlen(strings[i]), PG_UTF8));
	return construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT);
}

static void
run(const char *sql, int nargs, Oid *types, Datum *args, int expected)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, args, NULL, false, 0);

	if (ret != expected)
		elog(ERROR, "pg_llm: \"%s\" failed: %s", sql, SPI_result_code_string(ret));
}

static void
register_and_clear(const char *model, const char *table)
{
	Oid			types[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(model)};

	llm_commit_durably();		/* a loaded or trained tokenizer survives a crash */
	run(psprintf("INSERT INTO %s (model) VALUES ($1) ON CONFLICT (model) DO NOTHING",
				 llm_table_name("llm_tokenizer")),
		1, types, args, SPI_OK_INSERT);
	run(psprintf("DELETE FROM %s WHERE model = $1", llm_table_name(table)),
		1, types, args, SPI_OK_DELETE);
}

void
llm_store_vocab(const char *model, char **tokens, int n)
{
	Oid			types[2] = {TEXTOID, TEXTARRAYOID};
	Datum		args[2];

	SPI_connect();
	register_and_clear(model, "llm_bpe_vocab");
	args[0] = CStringGetTextDatum(model);
	args[1] = PointerGetDatum(text_array(tokens, n));
	run(psprintf("INSERT INTO %s (model, token, id) "
				 "SELECT $1, t.token, (t.i - 1)::int FROM unnest($2) WITH ORDINALITY AS t(token, i)",
				 llm_table_name("llm_bpe_vocab")),
		2, types, args, SPI_OK_INSERT);
	SPI_finish();
}

void
llm_store_merges(const char *model, char **left, char **right, int n)
{
	Oid			types[3] = {TEXTOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		args[3];

	SPI_connect();
	register_and_clear(model, "llm_bpe_merges");
	args[0] = CStringGetTextDatum(model);
	args[1] = PointerGetDatum(text_array(left, n));
	args[2] = PointerGetDatum(text_array(right, n));
	run(psprintf("INSERT INTO %s (model, rank, \"left\", \"right\") "
				 "SELECT $1, (m.i - 1)::int, m.l, m.r "
				 "FROM unnest($2, $3) WITH ORDINALITY AS m(l, r, i)",
				 llm_table_name("llm_bpe_merges")),
		3, types, args, SPI_OK_INSERT);
	SPI_finish();
}
