/*
 * pg_llm.h -- what every part of the extension shares with pg_llm.c: turning
 * a kernel's status into PostgreSQL's errors, and allocating large buffers.
 *
 * The parts of the engine live in folders (see README.md beside this file):
 *   tensor/   the `tensor` type          ops/    SQL wrappers of the kernels
 *   gpt2/     weights, forward, sampling io/     checkpoint files on the server
 *   kernels/  the math, in plain C: no PostgreSQL header
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

#endif							/* PG_LLM_H */
