/*
 * pg_llm.h -- what every part of the extension shares with pg_llm.c: turning
 * a kernel's status into PostgreSQL's errors, allocating large buffers, the
 * names of the extension's tables, the default model.
 *
 * The parts of the engine live in folders (see README.md beside this file):
 *   tensor/   the `tensor` type          ops/    SQL wrappers of the kernels
 *   gpt2/     weights, forward           io/     checkpoint files on the server
 *   text/     sampling, generation       kernels/ the math, in plain C: no
 *             streaming, beam search              PostgreSQL header
 */
#ifndef PG_LLM_H
#define PG_LLM_H

#include "postgres.h"

/* Prefix form works on every PostgreSQL version we build against. */
#define llm_noreturn __attribute__((noreturn))

/*
 * Run a kernel status through PostgreSQL: LLM_OK returns, LLM_NOMEM is
 * ERROR 53200, LLM_INTERRUPTED is the usual cancel (or terminate) error.
 */
extern void llm_check_status(int status);

/*
 * Allocate `bytes` in the current memory context; may exceed PostgreSQL's
 * 1 GB palloc limit.  Out of memory is ERROR 53200 naming `what`.
 */
extern void *llm_alloc_huge(Size bytes, const char *what);

/*
 * llm_alloc_huge() for a [rows, cols] float32 matrix; the product is
 * overflow-checked (ERROR 22003 naming `what` and the shape).
 */
extern float *llm_alloc_floats(int64 rows, int64 cols, const char *what);

/*
 * The extension's own tables, for SPI queries: "schema"."name", quoted as
 * needed, never resolved through the caller's search_path (a temporary table
 * or a table planted in an earlier schema could shadow it).
 */
extern Oid	llm_extension_schema(void);
extern char *llm_table_name(const char *name);
extern Oid	llm_table_oid(const char *name);

/*
 * `model` if not NULL, else the setting pg_llm.default_model (ERROR 22023
 * when that is empty too).
 */
extern const char *llm_model_or_default(const char *who, const char *model);

#endif							/* PG_LLM_H */
