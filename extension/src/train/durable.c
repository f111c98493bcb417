/*
 * durable.c -- llm_commit_durably() in SQL, for the checkpoints and imports
 * written in SQL; the rule is support.c's llm_commit_durably(), which the
 * training write-back (state.c) and the tokenizer's tables (bpe_tables.c)
 * call themselves.
 */
#include "postgres.h"

#include "fmgr.h"

#include "support/support.h"

/* llm_commit_durably() RETURNS void */
PG_FUNCTION_INFO_V1(llm_commit_durably_sql);
Datum
llm_commit_durably_sql(PG_FUNCTION_ARGS)
{
	llm_commit_durably();
	PG_RETURN_VOID();
}
