/*
 * bpe_tables.h -- the tokenizer's tables, as C code reads and writes them
 * through SPI (sql/60_tokenizer.sql creates them):
 *
 *   llm_tokenizer    (model, version)          one row per tokenizer
 *   llm_bpe_vocab    (model, token, id, bytes)  bytes is generated from token
 *   llm_bpe_merges   (model, rank, left, right)
 *
 * Table names are qualified with the extension's schema: a caller's
 * search_path must not decide which table we read or write.
 */
#ifndef PG_LLM_BPE_TABLES_H
#define PG_LLM_BPE_TABLES_H

#include "postgres.h"

#include "support/support.h"

/*
 * Replace the vocabulary of `model` with tokens[0..n) (UTF-8, token i has
 * id i), or its merges with (left[i], right[i]) of rank i; the model gets
 * its llm_tokenizer row if it had none.  Run inside the caller's statement:
 * an ERROR undoes it all.
 */
extern void llm_store_vocab(const char *model, char **tokens, int n);
extern void llm_store_merges(const char *model, char **left, char **right, int n);

#endif							/* PG_LLM_BPE_TABLES_H */
