/*
 * weight_store.c -- decoded weights, one copy per model version (and
 * dtype: fp32, or bf16 for pg_llm.inference_dtype), shared by every backend
 * of the server.  The two dtypes of a version are two slots, side by side;
 * a newer version supersedes both.
 *
 * A table of MAX_SLOTS slots says which versions are decoded, where their
 * arenas are, and how many pins hold each.  On PostgreSQL 17 and later the
 * table lives in a named segment of dynamic shared memory (the DSM registry
 * creates it at first use, no shared_preload_libraries needed) and the
 * arenas in a DSA area, created by the first backend that stores weights:
 * every backend maps the same pages, so 30 sessions generating from GPT-2
 * small hold its 498 MB once.  PostgreSQL 15-16 have no registry: there the
 * table and the arenas live in backend memory, each backend its own copy
 * (SHARED_WEIGHTS undefined; the logic is the same, the lock a no-op).
 *
 * Which version a backend asks for is decided by its caller, per call,
 * through the statement's snapshot and the caller's row-level security
 * (model_cache.c).  Decoding is done once: the first backend to miss marks
 * a slot DECODING and fills it outside the lock; others asking for that
 * version wait on a condition variable until it is READY (or abandoned).
 * Only committed versions come here: a version the caller's own transaction
 * wrote is decoded for that call alone (model_cache.c).
 *
 * Memory: a version is freed at its last unpin once a newer version of the
 * same model is READY; to stay under pg_llm.shared_cache_size, unpinned
 * versions are evicted least recently used first.  When that is not enough
 * (too big a model, or everything in use) the caller decodes a copy of its
 * own.
 *
 * Pins are records in the memory context of the call that took them; a
 * reset callback releases them, so an ERROR or a cancel (the context goes
 * away with the aborted transaction) and the end of a streaming SRF release
 * them as a normal return does.  A backend that exits releases what it
 * still holds (release_all_pins, before_shmem_exit).  A slot still
 * DECODING when its pin is released was abandoned half-filled: it is freed,
 * never served.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/dsa.h"
#include "utils/memutils.h"

#if PG_VERSION_NUM >= 170000
#define SHARED_WEIGHTS
#include "storage/condition_variable.h"
#include "storage/dsm_registry.h"
#include "storage/lwlock.h"
#include "utils/wait_event.h"
#endif

#include "gpt2/weight_store.h"
#include "pg_llm.h"

#define MAX_SLOTS 64
#define ARENA_ALIGN 64

typedef enum SlotState
{
	SLOT_FREE,
	SLOT_DECODING,				/* loaded_by is filling the arena */
	SLOT_READY
} SlotState;

typedef struct Slot
{
	SlotState	state;
	uint64		generation;		/* new at every use: a pin names (slot, generation) */
	Oid			dboid;
	Oid			config_relid;
	int64		version;
	bool		bf16;			/* the bf16 copy of the version */
	dsa_pointer model;			/* the name, NUL-terminated */
	dsa_pointer arena;			/* bytes + ARENA_ALIGN */
	Size		bytes;
	int			pins;
	bool		superseded;		/* a newer version is cached: free at the last unpin */
	int			loaded_by;
	TimestampTz loaded_at;
	TimestampTz last_used;
} Slot;

typedef struct WeightStore
{
#ifdef SHARED_WEIGHTS
	LWLock		lock;			/* guards everything below */
	int			tranche_id;
	ConditionVariable decoded;	/* a DECODING slot became READY or FREE */
	dsa_handle	area;			/* DSA_HANDLE_INVALID until weights are first stored */
#endif
	Size		used;			/* bytes of all slots' arenas */
	uint64		generations;
	Slot		slots[MAX_SLOTS];
} WeightStore;

static WeightStore *store = NULL;
static dlist_head my_pins = DLIST_STATIC_INIT(my_pins);

static void release_all_pins(int code, Datum arg);

/* ---- the home of the table: shared memory, or this backend's ------------- */

#ifdef SHARED_WEIGHTS

static dsa_area *area = NULL;	/* this backend's mapping of store->area */

static void
init_store(void *ptr)
{
	WeightStore *s = ptr;

	memset(s, 0, sizeof(WeightStore));
	s->tranche_id = LWLockNewTrancheId();
	LWLockInitialize(&s->lock, s->tranche_id);
	ConditionVariableInit(&s->decoded);
	s->area = DSA_HANDLE_INVALID;
}

static void
attach_store(void)
{
	bool		found;

	store = GetNamedDSMSegment("pg_llm weights", sizeof(WeightStore), init_store, &found);
	LWLockRegisterTranche(store->tranche_id, "pg_llm weights");
}

static void
lock_store(void)
{
	LWLockAcquire(&store->lock, LW_EXCLUSIVE);
}

static void
unlock_store(void)
{
	LWLockRelease(&store->lock);
}

/* This backend's mapping of the DSA area, created by the first backend that needs it. */
static dsa_area *
get_area(void)
{
	MemoryContext old;

	if (area != NULL)
		return area;
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (store->area == DSA_HANDLE_INVALID)
	{
		area = dsa_create(store->tranche_id);
		dsa_pin(area);			/* it outlives this backend */
		store->area = dsa_get_handle(area);
	}
	else
		area = dsa_attach(store->area);
	dsa_pin_mapping(area);		/* mapped until this backend exits, not per query */
	MemoryContextSwitchTo(old);
	return area;
}

/* For an error while the area grows: the likeliest cause is a small /dev/shm. */
static void
shm_error_context(void *arg)
{
	errcontext("storing %.0f MB of weights in shared memory "
			   "(a container needs a /dev/shm larger than pg_llm.shared_cache_size)",
			   (double) *(Size *) arg / (1024.0 * 1024.0));
}

static dsa_pointer
store_alloc(Size bytes)
{
	ErrorContextCallback context = {.previous = error_context_stack,
	.callback = shm_error_context,.arg = &bytes};
	dsa_pointer p;

	error_context_stack = &context;
	p = dsa_allocate_extended(get_area(), bytes, DSA_ALLOC_HUGE | DSA_ALLOC_NO_OOM);
	error_context_stack = context.previous;
	return p;
}

static void
store_free(dsa_pointer p)
{
	dsa_free(get_area(), p);
}

static void *
store_address(dsa_pointer p)
{
	return dsa_get_address(get_area(), p);
}

static void
wait_for_decoding(void)
{
	ConditionVariableSleep(&store->decoded, PG_WAIT_EXTENSION);
}

static void
stop_waiting(void)
{
	ConditionVariableCancelSleep();
}

static void
wake_waiters(void)
{
	ConditionVariableBroadcast(&store->decoded);
}

#else							/* PostgreSQL 15-16: this backend's own table */

static void
attach_store(void)
{
	store = MemoryContextAllocZero(TopMemoryContext, sizeof(WeightStore));
}

static void
lock_store(void)
{
}

static void
unlock_store(void)
{
}

static dsa_pointer
store_alloc(Size bytes)
{
	void	   *p = MemoryContextAllocExtended(TopMemoryContext, bytes,
											   MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);

	return p == NULL ? InvalidDsaPointer : (dsa_pointer) (uintptr_t) p;
}

static void
store_free(dsa_pointer p)
{
	pfree((void *) (uintptr_t) p);
}

static void *
store_address(dsa_pointer p)
{
	return (void *) (uintptr_t) p;
}

/* Nobody else decodes into this backend's table. */
static void
wait_for_decoding(void)
{
	elog(ERROR, "pg_llm: waiting for a decoding in a backend-local weight store");
}

static void
stop_waiting(void)
{
}

static void
wake_waiters(void)
{
}

#endif							/* SHARED_WEIGHTS */

static void
ensure_store(void)
{
	if (store != NULL)
		return;
	attach_store();
	before_shmem_exit(release_all_pins, (Datum) 0);
}

/* ---- slots (the lock held) ------------------------------------------------- */

static bool
slot_is(const Slot *s, const WeightKey *key)
{
	return s->state != SLOT_FREE && s->dboid == MyDatabaseId &&
		s->config_relid == key->config_relid && s->version == key->version &&
		s->bf16 == key->bf16 && strcmp(store_address(s->model), key->model) == 0;
}

/* Another version of the same model (in either dtype; the same version's other dtype is not). */
static bool
slot_is_sibling(const Slot *s, const Slot *of)
{
	return s != of && s->state == SLOT_READY && s->version != of->version &&
		s->dboid == of->dboid &&
		s->config_relid == of->config_relid &&
		strcmp(store_address(s->model), store_address(of->model)) == 0;
}

static int
find_slot(const WeightKey *key)
{
	for (int i = 0; i < MAX_SLOTS; i++)
		if (slot_is(&store->slots[i], key))
			return i;
	return -1;
}

/* Give a slot's memory back; true if it was being decoded (waiters must wake). */
static bool
free_slot(Slot *s)
{
	bool		was_decoding = s->state == SLOT_DECODING;

	store_free(s->arena);
	store_free(s->model);
	store->used -= s->bytes;
	s->state = SLOT_FREE;
	s->generation = ++store->generations;
	return was_decoding;
}

/* The least recently used READY slot nobody pins, or NULL. */
static Slot *
eviction_victim(void)
{
	Slot	   *victim = NULL;

	for (int i = 0; i < MAX_SLOTS; i++)
	{
		Slot	   *s = &store->slots[i];

		if (s->state == SLOT_READY && s->pins == 0 &&
			(victim == NULL || s->last_used < victim->last_used))
			victim = s;
	}
	return victim;
}

static Slot *
free_slot_or_null(void)
{
	for (int i = 0; i < MAX_SLOTS; i++)
		if (store->slots[i].state == SLOT_FREE)
			return &store->slots[i];
	return NULL;
}

/*
 * A free slot, and room under pg_llm.shared_cache_size for `bytes` more,
 * made by evicting unpinned versions, least recently used first; NULL when
 * even that is not enough.
 */
static Slot *
make_room(Size bytes)
{
	Size		cap = (Size) llm_shared_cache_mb * 1024 * 1024;
	Slot	   *slot = NULL;

	if (bytes > cap)
		return NULL;
	while (store->used + bytes > cap || (slot = free_slot_or_null()) == NULL)
	{
		Slot	   *victim = eviction_victim();

		if (victim == NULL)
			return NULL;
		free_slot(victim);
	}
	return slot;
}

/* ---- pins ------------------------------------------------------------------ */

static void
release_pin(WeightPin *pin)
{
	Slot	   *s;
	bool		wake = false;

	if (pin->slot < 0)
		return;
	dlist_delete(&pin->node);
	lock_store();
	s = &store->slots[pin->slot];
	if (s->generation == pin->generation)
	{
		if (s->state == SLOT_DECODING)
			wake = free_slot(s);	/* abandoned half-filled */
		else
		{
			s->pins--;
			s->last_used = GetCurrentTimestamp();
			if (s->pins == 0 && s->superseded)
				free_slot(s);
		}
	}
	unlock_store();
	pin->slot = -1;
	if (wake)
		wake_waiters();
}

static void
release_pin_callback(void *arg)
{
	release_pin((WeightPin *) arg);
}

static void
release_all_pins(int code, Datum arg)
{
	dlist_mutable_iter iter;

#ifdef SHARED_WEIGHTS
	if (LWLockHeldByMe(&store->lock))
		LWLockRelease(&store->lock);
#endif
	dlist_foreach_modify(iter, &my_pins)
		release_pin(dlist_container(WeightPin, node, iter.cur));
}

/* A pin record in `owner`, not yet holding anything (so that nothing can fail after pinning). */
static WeightPin *
new_pin(MemoryContext owner)
{
	WeightPin  *pin = MemoryContextAllocZero(owner, sizeof(WeightPin));

	pin->slot = -1;
	pin->on_reset.func = release_pin_callback;
	pin->on_reset.arg = pin;
	MemoryContextRegisterResetCallback(owner, &pin->on_reset);
	return pin;
}

/* Hold slot s with `pin` (the lock held). */
static void
pin_slot(WeightPin *pin, Slot *s)
{
	s->pins++;
	s->last_used = GetCurrentTimestamp();
	pin->slot = s - store->slots;
	pin->generation = s->generation;
	pin->arena = (void *) TYPEALIGN(ARENA_ALIGN, store_address(s->arena));
	dlist_push_head(&my_pins, &pin->node);
}

/* ---- the API --------------------------------------------------------------- */

WeightLookup
weight_store_acquire(const WeightKey *key, Size bytes, MemoryContext owner, WeightPin **pin_out)
{
	WeightPin  *pin = new_pin(owner);
	Size		name_bytes = strlen(key->model) + 1;
	Size		slot_bytes = bytes + ARENA_ALIGN + name_bytes;
	Slot	   *s;
	int			i;

	ensure_store();
	lock_store();
	while ((i = find_slot(key)) >= 0 && store->slots[i].state == SLOT_DECODING)
	{
		s = &store->slots[i];
		if (s->loaded_by == MyProcPid)
		{
			/* our own decoding, failed (we are not inside it): its pin's context lingers */
			free_slot(s);
			continue;
		}
		unlock_store();
		wait_for_decoding();
		lock_store();
	}
	stop_waiting();

	if (i >= 0)
	{
		pin_slot(pin, &store->slots[i]);
		unlock_store();
		*pin_out = pin;
		return WEIGHTS_FOUND;
	}

	s = make_room(slot_bytes);
	if (s != NULL)
	{
		dsa_pointer arena = store_alloc(bytes + ARENA_ALIGN);
		dsa_pointer model = DsaPointerIsValid(arena) ? store_alloc(name_bytes) : InvalidDsaPointer;

		if (!DsaPointerIsValid(model))
		{
			if (DsaPointerIsValid(arena))
				store_free(arena);
			s = NULL;
		}
		else
		{
			memcpy(store_address(model), key->model, name_bytes);
			s->state = SLOT_DECODING;
			s->generation = ++store->generations;
			s->dboid = MyDatabaseId;
			s->config_relid = key->config_relid;
			s->version = key->version;
			s->bf16 = key->bf16;
			s->model = model;
			s->arena = arena;
			s->bytes = slot_bytes;
			s->pins = 0;
			s->superseded = false;
			s->loaded_by = MyProcPid;
			store->used += s->bytes;
			pin_slot(pin, s);
		}
	}
	unlock_store();

	if (s != NULL)
	{
		*pin_out = pin;
		return WEIGHTS_TO_DECODE;
	}
	if (slot_bytes > (Size) llm_shared_cache_mb * 1024 * 1024)
		ereport(NOTICE,
				(errmsg("model \"%s\" needs %.1f MB, more than pg_llm.shared_cache_size (%d MB): "
						"its weights are decoded for this call only",
						key->model, (double) slot_bytes / (1024.0 * 1024.0), llm_shared_cache_mb)));
	else
		elog(DEBUG1, "pg_llm: no room for model \"%s\" in pg_llm.shared_cache_size (%d MB): "
			 "the cached versions are in use (or shared memory ran out); "
			 "its weights are decoded for this call only",
			 key->model, llm_shared_cache_mb);
	*pin_out = NULL;
	return WEIGHTS_NO_ROOM;
}

void
weight_store_publish(WeightPin *pin)
{
	Slot	   *s = &store->slots[pin->slot];

	lock_store();
	s->state = SLOT_READY;
	s->loaded_at = s->last_used = GetCurrentTimestamp();
	for (int i = 0; i < MAX_SLOTS; i++)
	{
		Slot	   *other = &store->slots[i];

		if (!slot_is_sibling(other, s))
			continue;
		if (other->version > s->version)
			s->superseded = true;	/* an older snapshot's version: only its readers use it */
		else
		{
			other->superseded = true;
			if (other->pins == 0)
				free_slot(other);
		}
	}
	unlock_store();
	wake_waiters();
}

WeightEntry *
weight_store_list(int *n)
{
	WeightEntry *entries = palloc(sizeof(WeightEntry) * MAX_SLOTS);

	*n = 0;
	ensure_store();
	lock_store();
	for (int i = 0; i < MAX_SLOTS; i++)
	{
		Slot	   *s = &store->slots[i];
		WeightEntry *e = &entries[*n];

		if (s->state != SLOT_READY || s->dboid != MyDatabaseId)
			continue;
		e->config_relid = s->config_relid;
		e->model = pstrdup(store_address(s->model));
		e->version = s->version;
		e->bf16 = s->bf16;
		e->bytes = s->bytes;
		e->pins = s->pins;
		e->loaded_by = s->loaded_by;
		e->loaded_at = s->loaded_at;
		e->last_used = s->last_used;
		(*n)++;
	}
	unlock_store();
	return entries;
}

void
weight_store_drop(const WeightKey *key)
{
	int			i;

	ensure_store();
	lock_store();
	i = find_slot(key);
	if (i >= 0 && store->slots[i].state == SLOT_READY && store->slots[i].pins == 0)
		free_slot(&store->slots[i]);
	unlock_store();
}
