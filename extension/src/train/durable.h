/*
 * durable.h -- commits that survive a crash, for what a learner is told is
 * saved: a training write-back (state.c), a checkpoint and an import (SQL,
 * through llm_commit_durably()).
 */
#ifndef PG_LLM_TRAIN_DURABLE_H
#define PG_LLM_TRAIN_DURABLE_H

/*
 * Make the current transaction's COMMIT wait until its WAL is on disk, as
 * SET LOCAL synchronous_commit = on does, where synchronous_commit is off
 * (the lab's server: a training step's log rows need not wait for the disk).
 * A setting that already waits (local, remote_apply, ...) is kept.
 */
extern void llm_commit_durably(void);

#endif							/* PG_LLM_TRAIN_DURABLE_H */
