/*
 * support.h -- the PostgreSQL glue every part of the extension shares:
 * turning a kernel's status into PostgreSQL's errors, allocating large
 * buffers, the names of the extension's tables, the set-returning
 * function setup under its PostgreSQL 15 name, and durable commits.
 *
 * It includes only PostgreSQL's headers and kernels/kernels.h, so any folder
 * may include it without an include cycle.
 */
#ifndef PG_LLM_SUPPORT_H
#define PG_LLM_SUPPORT_H

#include "postgres.h"

#include "funcapi.h"

/* Prefix form works on every PostgreSQL version we build against. */
#define llm_noreturn __attribute__((noreturn))

/* InitMaterializedSRF() is called SetSingleFuncCall() in PostgreSQL 15. */
#if PG_VERSION_NUM < 160000
#define InitMaterializedSRF SetSingleFuncCall
#endif

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
 * ERROR 42501 when the current role may read `model` but not change it: it
 * is not its owner and row-level security applies (to a superuser it does
 * not).  An unknown model passes: its callers report it.  What every path
 * that writes a model's parameters checks first (SQL: llm_require_model_owner).
 */
extern void llm_require_model_owner(const char *model);

/*
 * For what a learner is told is saved (a training write-back, a checkpoint,
 * an import, a tokenizer): make the current transaction's COMMIT wait until
 * its WAL is on disk, as SET LOCAL synchronous_commit = on does, where
 * synchronous_commit is off (the lab's server: a training step's log rows
 * need not wait for the disk).  A setting that already waits (local,
 * remote_apply, ...) is kept.  SQL: llm_commit_durably() (train/durable.c).
 */
extern void llm_commit_durably(void);

#endif							/* PG_LLM_SUPPORT_H */
