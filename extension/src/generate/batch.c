/*
 * batch.c -- decode batching: sessions that generate from the same model
 * version at the same time compute their next-token steps together, one
 * pass over the weights for all of them.
 *
 * Decoding one token reads every weight once for one multiply-add per row:
 * it is bound by memory bandwidth, and N sessions each streaming the same
 * 500 MB per token share that bandwidth N ways.  Batched, one pass over a
 * weight matrix serves the rows of every session waiting for it.
 *
 * What is shared, and what is not.  A session keeps everything it has
 * alone: its KV cache, the attention, LayerNorms and GELU, sampling, its
 * privileges (checked when it got the weights), its cancel and
 * statement_timeout, its errors, streaming.  Only the products of one row
 * by a weight matrix -- qkv, the attention projection, fc and the MLP
 * projection of each layer, and the lm_head: 4 * n_layer + 1 "phases" per
 * step -- go through here (forward.c's gpt2_row_matmul_hook, set for the
 * duration of a decode step).  Prefill stays in the session, outside any
 * batch: a long prompt does not stall the others' decode.
 *
 * How sessions meet.  A table of learners in a named segment of dynamic
 * shared memory (the DSM registry: no shared_preload_libraries needed), one
 * entry per session taking part, with a buffer (in a DSA area) that holds
 * its input row and receives its output row.  A learner in a step is
 * BETWEEN (computing its own part, e.g. attention), POSTED (its row for a
 * phase is in its buffer), CLAIMED (being computed) or DONE.  Learners of
 * the same group -- database, model, version and SIMD set -- batch
 * together.  When every learner of a group in a step is POSTED, the lowest
 * phase posted is served: every row posted at that phase, in one
 * llm_matmul_rows.  Serving the lowest phase first lets a learner that
 * joins mid-step catch up with the others, who wait for it, so after at
 * most one step they all go through the phases in lockstep.
 *
 * Who computes.  The first learner of the group to see the batch complete
 * claims it and computes it with its own threads, reading the weights
 * through its own pinned mapping of the shared model (every learner of the
 * group has the same version mapped, weight_store.c): a leader elected
 * among the waiting backends, per batch.  We chose this over a background
 * worker: no shared_preload_libraries, no process to start, map weights
 * into, restart or keep alive; a lone learner computes its own rows at once
 * with no hand-off (the same bits as without batching, see below); and the
 * work always runs in a process that is waiting for it anyway.  The server
 * of a batch holds off its own cancel while it computes (a few ms) and
 * reads only numbers from the others: nothing one learner posts can make it
 * fail.  If it fails anyway (mapping a buffer), it hands the rows back,
 * POSTED, for another learner to serve.
 *
 * Leaving.  A learner leaves the table at the end of each step (between
 * steps it samples, or waits for the next FETCH of a stream: nobody waits
 * for it then) and at an error or cancel (step_batched) or exit
 * (before_shmem_exit).  Its rows are then never waited for again.  A row
 * CLAIMED when its learner leaves is finished by its server into the
 * learner's buffer, which is not reused until then.  A learner that stops
 * (a debugger, SIGSTOP) in the middle of a step stalls its group.
 *
 * Batch invariance.  llm_matmul_rows computes each row in exactly the
 * order llm_matmul computes it alone (kernels/matmul/gemv_rows.c), and a
 * batch of one row is llm_matmul itself: a learner's tokens are the same
 * bits alone, in any batch and at any thread count of any server.
 *
 * PostgreSQL 15-16 have no DSM registry (and keep weights per backend):
 * there every step runs alone, as with pg_llm.decode_batching = off.
 */
#include "postgres.h"

#include "lib/ilist.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "gpt2/decode_rows.h"
#include "kernels/kernels.h"
#include "support/support.h"
#include "generate/batch.h"
#include "pg_llm.h"

#if PG_VERSION_NUM >= 170000
#define DECODE_BATCHING
#include "storage/condition_variable.h"
#include "storage/dsm_registry.h"
#include "storage/lwlock.h"
#include "utils/dsa.h"
#include "utils/wait_event.h"
#endif

/* A step alone: the forward of one token and its logits. */
static void
step_alone(Gpt2State *st, const int32 *token, float *logits)
{
	gpt2_forward(st, token, 1);
	gpt2_logits(st, 0, 1, logits);
}

#ifdef DECODE_BATCHING

#define MAX_LEARNERS GPT2_DECODE_MAX_ROWS
#define MODEL_NAME_LEN 64
#define GRACE_MS 10				/* how long a batch waits for a learner between steps */

typedef enum RowState
{
	ROW_OUT,					/* not generating */
	ROW_BETWEEN,				/* between steps (sampling, or idle after grace_ms) */
	ROW_POSTED,					/* its step waits to be served */
	ROW_CLAIMED,				/* a server is computing it */
	ROW_DONE					/* its logits are in its buffer */
} RowState;

typedef struct Learner
{
	int			pid;			/* 0: the entry is free (once state is OUT) */
	RowState	state;
	TimestampTz since;			/* when it got its last result (BETWEEN, DONE) */
	/* the group: learners that may share a batch */
	Oid			dboid;
	Oid			config_relid;
	int64		version;
	int			isa;
	char		model[MODEL_NAME_LEN];
	/* the posted step */
	int32		token;
	int64		pos;
	dsa_pointer kv;				/* its KV cache (decode_rows.h's layout) */
	int64		n_ctx;
	dsa_pointer logits;			/* the entry's buffer for its logits */
	int64		logits_floats;
	int			batch_rows;		/* rows of the batch that served it (set when DONE) */
} Learner;

typedef struct BatchTable
{
	LWLock		lock;			/* guards everything below */
	int			tranche_id;
	ConditionVariable changed;	/* a batch was served, or a learner left */
	dsa_handle	area;			/* DSA_HANDLE_INVALID until the first buffer */
	Learner		learners[MAX_LEARNERS];
} BatchTable;

/* A generation's KV cache in the DSA area, freed with its state. */
typedef struct SharedCache
{
	const Gpt2State *st;
	dsa_pointer kv;
	dlist_node	node;			/* in my_caches */
	MemoryContextCallback on_reset;
} SharedCache;

static BatchTable *table = NULL;
static dsa_area *area = NULL;
static int	me = -1;			/* this backend's entry, once it has one */
static dlist_head my_caches = DLIST_STATIC_INIT(my_caches);
static float *scratch = NULL;	/* for serving: gpt2_decode_rows' */
static int64 scratch_floats = 0;

/* this backend's steps since batch_report(): how many, how many shared, their rows */
static int64 n_steps = 0;
static int64 n_shared = 0;
static int64 rows_batched = 0;
static int	largest_batch = 0;

static void
init_table(void *ptr)
{
	BatchTable *t = ptr;

	memset(t, 0, sizeof(BatchTable));
	t->tranche_id = LWLockNewTrancheId();
	LWLockInitialize(&t->lock, t->tranche_id);
	ConditionVariableInit(&t->changed);
	t->area = DSA_HANDLE_INVALID;
}

/* The table and the DSA area, mapped in this backend. */
static void
attach(void)
{
	bool		found;
	MemoryContext old;

	if (area != NULL)
		return;
	table = GetNamedDSMSegment("pg_llm decode steps", sizeof(BatchTable), init_table, &found);
	LWLockRegisterTranche(table->tranche_id, "pg_llm decode steps");
	old = MemoryContextSwitchTo(TopMemoryContext);
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	if (table->area == DSA_HANDLE_INVALID)
	{
		area = dsa_create(table->tranche_id);
		dsa_pin(area);			/* it outlives this backend */
		table->area = dsa_get_handle(area);
	}
	LWLockRelease(&table->lock);
	if (area == NULL)
		area = dsa_attach(table->area);
	dsa_pin_mapping(area);
	MemoryContextSwitchTo(old);
}

static bool
same_group(const Learner *a, const Learner *b)
{
	return a->dboid == b->dboid && a->config_relid == b->config_relid &&
		a->version == b->version && a->isa == b->isa && strcmp(a->model, b->model) == 0;
}

/* ---- the KV caches ---------------------------------------------------------- */

static void
free_shared_cache(void *arg)
{
	SharedCache *sc = arg;

	dlist_delete(&sc->node);
	dsa_free(area, sc->kv);
}

void
batch_share_cache(Gpt2State *st)
{
	const Gpt2Model *m = st->model;
	int64		C = m->cfg.n_embd;
	int64		floats = 2 * (int64) m->cfg.n_layer * st->n_ctx * C;
	SharedCache *sc;
	dsa_pointer kv;
	float	   *base;

	if (!llm_decode_batching || st->kv == NULL || st->n_past > 0 ||
		strlen(m->name) >= MODEL_NAME_LEN)
		return;
	attach();
	kv = dsa_allocate_extended(area, floats * sizeof(float), DSA_ALLOC_HUGE | DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(kv))
		return;					/* no room: this generation decodes alone */
	base = dsa_get_address(area, kv);
	for (int l = 0; l < m->cfg.n_layer; l++)
	{
		pfree(st->kv->k[l]);
		pfree(st->kv->v[l]);
		st->kv->k[l] = GPT2_KV_K(base, l, st->n_ctx, C);
		st->kv->v[l] = GPT2_KV_V(base, l, st->n_ctx, C);
	}
	sc = MemoryContextAllocZero(st->mcxt, sizeof(SharedCache));
	sc->st = st;
	sc->kv = kv;
	sc->on_reset.func = free_shared_cache;
	sc->on_reset.arg = sc;
	MemoryContextRegisterResetCallback(st->mcxt, &sc->on_reset);
	dlist_push_head(&my_caches, &sc->node);
}

static SharedCache *
shared_cache_of(const Gpt2State *st)
{
	dlist_iter	it;

	dlist_foreach(it, &my_caches)
	{
		SharedCache *sc = dlist_container(SharedCache, node, it.cur);

		if (sc->st == st)
			return sc;
	}
	return NULL;
}

/* ---- leaving ------------------------------------------------------------------ */

/*
 * Out of the batch, once no server computes this entry's step (it reads and
 * writes our KV cache: the cache must outlive it).  Interrupts are held: we
 * are on the way out of an error, or of the backend, and a server finishes
 * within one step.
 */
static void
leave(void)
{
	if (me < 0)
		return;
	HOLD_INTERRUPTS();
	ConditionVariableCancelSleep();
	for (;;)
	{
		Learner    *self = &table->learners[me];
		bool		claimed;

		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
		claimed = self->state == ROW_CLAIMED;
		if (!claimed)
			self->state = ROW_OUT;
		LWLockRelease(&table->lock);
		if (!claimed)
			break;
		ConditionVariableSleep(&table->changed, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	RESUME_INTERRUPTS();
	/* whoever waited for this learner to post may go on */
	ConditionVariableBroadcast(&table->changed);
}

static void
leave_at_exit(int code, Datum arg)
{
	leave();
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	table->learners[me].pid = 0;
	LWLockRelease(&table->lock);
	me = -1;
}

/* ---- serving a batch ------------------------------------------------------------ */

/*
 * The rows of the CLAIMED entries `rows`, in this backend's mapping; on an
 * error (mapping a buffer) they go back to POSTED, for another learner.
 */
static void
map_rows(const int *rows, int n, Gpt2DecodeRow *out)
{
	PG_TRY();
	{
		for (int i = 0; i < n; i++)
		{
			const Learner *l = &table->learners[rows[i]];

			out[i].token = l->token;
			out[i].pos = l->pos;
			out[i].n_ctx = l->n_ctx;
			out[i].kv = dsa_get_address(area, l->kv);
			out[i].logits = dsa_get_address(area, l->logits);
		}
	}
	PG_CATCH();
	{
		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
		for (int i = 0; i < n; i++)
			table->learners[rows[i]].state = ROW_POSTED;
		LWLockRelease(&table->lock);
		ConditionVariableBroadcast(&table->changed);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * Compute the steps CLAIMED by this backend with its own mapping of the
 * group's weights, then mark them DONE.
 */
static void
serve(const Gpt2Model *m, const int *rows, int n)
{
	Gpt2DecodeRow steps[MAX_LEARNERS];
	int			(*hook) (void) = llm_interrupt_hook;
	TimestampTz now;

	map_rows(rows, n, steps);
	/* the others wait for these rows: this backend's cancel waits for them too */
	llm_interrupt_hook = NULL;
	gpt2_decode_rows(m, steps, n, scratch);
	llm_interrupt_hook = hook;

	now = GetCurrentTimestamp();
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		Learner    *l = &table->learners[rows[i]];

		l->state = ROW_DONE;
		l->since = now;
		l->batch_rows = n;
	}
	LWLockRelease(&table->lock);
	ConditionVariableBroadcast(&table->changed);
}

/*
 * The lock held: whether `who`'s group may be served now -- every learner
 * of the group that is generating has posted, but those between steps for
 * longer than GRACE_MS (idle: a stream waiting for its next FETCH) -- and
 * if not, how long to wait (*wait_ms, -1: until woken).
 */
static bool
gathered(const Learner *who, long *wait_ms)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		ready = true;

	*wait_ms = -1;
	for (int i = 0; i < MAX_LEARNERS; i++)
	{
		const Learner *l = &table->learners[i];

		if (l->state == ROW_OUT || l->state == ROW_POSTED || !same_group(l, who))
			continue;
		if (l->state == ROW_CLAIMED)
			return false;		/* its server wakes everyone when done */
		/* BETWEEN or DONE: it will post soon, unless idle */
		{
			TimestampTz until = TimestampTzPlusMilliseconds(l->since, GRACE_MS);

			if (until > now)
			{
				long		ms = (long) ((until - now + 999) / 1000);

				ready = false;
				*wait_ms = *wait_ms < 0 ? ms : Min(*wait_ms, ms);
			}
		}
	}
	return ready;
}

/* Post this backend's step, wait for its logits; serve batches meanwhile. */
static void
post_and_wait(const Gpt2Model *m)
{
	Learner    *self = &table->learners[me];

	ConditionVariablePrepareToSleep(&table->changed);
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	self->state = ROW_POSTED;
	for (;;)
	{
		long		wait_ms = -1;

		if (self->state == ROW_DONE)
		{
			self->state = ROW_BETWEEN;
			n_steps++;
			n_shared += self->batch_rows > 1;
			rows_batched += self->batch_rows;
			largest_batch = Max(largest_batch, self->batch_rows);
			break;
		}
		if (self->state == ROW_POSTED && gathered(self, &wait_ms))
		{
			int			rows[MAX_LEARNERS];
			int			n = 0;

			for (int i = 0; i < MAX_LEARNERS; i++)
			{
				Learner    *l = &table->learners[i];

				if (l->state == ROW_POSTED && same_group(l, self))
				{
					l->state = ROW_CLAIMED;
					rows[n++] = i;
				}
			}
			LWLockRelease(&table->lock);
			serve(m, rows, n);
		}
		else
		{
			LWLockRelease(&table->lock);
			if (self->state == ROW_POSTED && wait_ms >= 0)
				ConditionVariableTimedSleep(&table->changed, wait_ms, PG_WAIT_EXTENSION);
			else
				ConditionVariableSleep(&table->changed, PG_WAIT_EXTENSION);
		}
		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	}
	LWLockRelease(&table->lock);
	ConditionVariableCancelSleep();
}

/*
 * An entry of the table (once per backend), its logits buffer and this
 * backend's scratch sized for `m`, and `m`'s group; false when batching
 * cannot be used (the table is full).
 */
static bool
join(const Gpt2Model *m)
{
	int64		V = m->cfg.vocab_size;
	int64		need = gpt2_decode_scratch_floats(m, MAX_LEARNERS);
	Learner    *self;

	if (me < 0)
	{
		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
		for (int i = 0; i < MAX_LEARNERS && me < 0; i++)
			if (table->learners[i].pid == 0 && table->learners[i].state == ROW_OUT)
			{
				me = i;
				table->learners[i].pid = MyProcPid;
			}
		LWLockRelease(&table->lock);
		if (me < 0)
			return false;
		before_shmem_exit(leave_at_exit, (Datum) 0);
	}
	self = &table->learners[me];
	if (scratch_floats < need)
	{
		if (scratch)
			pfree(scratch);
		scratch = MemoryContextAllocHuge(TopMemoryContext, need * sizeof(float));
		scratch_floats = need;
	}
	/* between steps nobody reads the logits buffer */
	if (!DsaPointerIsValid(self->logits) || self->logits_floats < V)
	{
		dsa_pointer old = self->logits;

		self->logits = dsa_allocate(area, V * sizeof(float));
		self->logits_floats = V;
		if (DsaPointerIsValid(old))
			dsa_free(area, old);
	}
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	self->dboid = MyDatabaseId;
	self->config_relid = m->config_relid;
	self->version = m->version;
	self->isa = (int) llm_cpu_isa();
	strlcpy(self->model, m->name, MODEL_NAME_LEN);
	LWLockRelease(&table->lock);
	return true;
}

void
batch_decode_step(Gpt2State *st, const int32 *token, float *logits)
{
	SharedCache *sc = shared_cache_of(st);
	Learner    *self;

	/* a step that does not fit: gpt2_forward says so */
	if (!llm_decode_batching || sc == NULL || st->n_past >= st->n_ctx || !join(st->model))
	{
		step_alone(st, token, logits);
		return;
	}
	self = &table->learners[me];
	self->token = *token;
	self->pos = st->n_past;
	self->kv = sc->kv;
	self->n_ctx = st->n_ctx;
	PG_TRY();
	{
		post_and_wait(st->model);
	}
	PG_CATCH();
	{
		leave();
		PG_RE_THROW();
	}
	PG_END_TRY();
	memcpy(logits, dsa_get_address(area, self->logits), st->model->cfg.vocab_size * sizeof(float));
	st->n_past++;
	st->last_rows = 0;			/* acts->lnf was not written: no gpt2_logits for this step */
}

void
batch_end(void)
{
	if (n_steps > 0)
		elog(DEBUG1, "pg_llm decode batching: " INT64_FORMAT " steps, "
			 INT64_FORMAT " of them in a batch with other sessions (%.1f rows on average, "
			 "largest batch: %d rows)",
			 n_steps, n_shared, (double) rows_batched / n_steps, largest_batch);
	n_steps = n_shared = rows_batched = 0;
	largest_batch = 0;
	if (me >= 0)
		leave();
}

#else							/* PostgreSQL 15-16: every step alone */

void
batch_share_cache(Gpt2State *st)
{
}

void
batch_decode_step(Gpt2State *st, const int32 *token, float *logits)
{
	step_alone(st, token, logits);
}

void
batch_end(void)
{
}

#endif							/* DECODE_BATCHING */
