/*
 * weight_store.h -- where decoded weights live (weight_store.c): one copy of
 * each model version per server, in dynamic shared memory that every backend
 * maps (PostgreSQL 17 and later, through the DSM registry); on PostgreSQL
 * 15-16, which have no registry, the same table in each backend's memory.
 *
 *   WeightKey key = {config_relid, "gpt2-small", version};
 *   WeightPin *pin;
 *   switch (weight_store_acquire(&key, bytes, CurrentMemoryContext, &pin))
 *   {
 *       case WEIGHTS_FOUND:     ... read pin->arena ...
 *       case WEIGHTS_TO_DECODE: ... fill pin->arena ...; weight_store_publish(pin);
 *       case WEIGHTS_NO_ROOM:   ... decode a copy of your own ...
 *   }
 *
 * A pin keeps its version in place for as long as the memory context it was
 * taken in lives: until that context is reset or deleted (the end of a call,
 * of a streaming SRF, of the transaction after an ERROR) or the backend
 * exits.  Unpinned versions stay cached until a newer version of the same
 * model replaces them, or pg_llm.shared_cache_size needs their room (least
 * recently used first).
 */
#ifndef PG_LLM_GPT2_WEIGHT_STORE_H
#define PG_LLM_GPT2_WEIGHT_STORE_H

#include "postgres.h"

#include "lib/ilist.h"
#include "utils/palloc.h"
#include "utils/timestamp.h"

/*
 * A model version, in the current database, as floats or as bf16: the two
 * copies of one version are two entries, cached side by side.
 */
typedef struct WeightKey
{
	Oid			config_relid;	/* llm_model_config's OID: a new one after CREATE EXTENSION */
	const char *model;
	int64		version;		/* llm_model_config.version: never handed out twice */
	bool		bf16;			/* the bf16 arena (gpt2_model_bind_bf16), not the float one */
} WeightKey;

typedef enum WeightLookup
{
	WEIGHTS_FOUND,				/* pin->arena holds the weights */
	WEIGHTS_TO_DECODE,			/* pin->arena is room for them: fill it, then publish */
	WEIGHTS_NO_ROOM				/* no pin: the weights do not fit (a NOTICE or DEBUG1 said why) */
} WeightLookup;

typedef struct WeightPin
{
	void	   *arena;			/* 64-byte aligned */
	int			slot;			/* -1 once released */
	uint64		generation;		/* the slot's, when pinned */
	dlist_node	node;			/* in this backend's list of pins */
	MemoryContextCallback on_reset;
} WeightPin;

/*
 * The weights of `key` (`bytes` of floats), pinned while `owner` lives.
 * Waits while another backend decodes the same version.
 */
extern WeightLookup weight_store_acquire(const WeightKey *key, Size bytes, MemoryContext owner,
										 WeightPin **pin);

/* The arena is filled: other backends may use it now. */
extern void weight_store_publish(WeightPin *pin);

/* One cached version, as llm_model_cache() shows it. */
typedef struct WeightEntry
{
	Oid			config_relid;
	char	   *model;
	int64		version;
	bool		bf16;
	int64		bytes;
	int			pins;			/* how many pins hold it (a backend may hold several) */
	int			loaded_by;		/* PID of the backend that decoded it */
	TimestampTz loaded_at;
	TimestampTz last_used;
} WeightEntry;

/* The current database's cached versions (palloc'd). */
extern WeightEntry *weight_store_list(int *n);

/* Free a cached version now, unless it is pinned. */
extern void weight_store_drop(const WeightKey *key);

#endif							/* PG_LLM_GPT2_WEIGHT_STORE_H */
