/*
 * batch.c -- decode batching: sessions that generate from the same model
 * version at the same time compute their next-token steps together, one
 * pass over the weights for all of them.
 *
 * Decoding one token reads every weight once for one multiply-add per row:
 * it is bound by memory bandwidth, and N sessions each streaming the same
 * 500 MB per token share that bandwidth N ways.  Batched, each weight
 * matrix is read once per step for the rows of every session.
 *
 * What is shared, and what is not.  A session keeps what it has alone: its
 * prompt and prefill (outside any batch: a learner joins the table at its
 * first decode step, so nobody's batch waits for a prefill), sampling, stop
 * conditions, its privileges (checked when it got the weights), cancel and
 * statement_timeout, its errors, streaming.  Only the step -- the forward
 * of one token over the KV cache, and its logits -- is computed by whoever
 * serves the batch (gpt2/decode_rows.c).  So that the server can reach it,
 * a generation's KV cache lives in a DSA area (batch_share_cache, before
 * the prefill writes it), freed with its state.  A long prompt then slows
 * the others only as any process would, by taking a core: measured with
 * bench_serving.py --long-prompt 512 (8 learners, 2 cores, load 6-8), the
 * steps that overlapped its 2-3 s prefill had a p95 of 231 ms against 187
 * ms for the others in one run, 649 ms (all steps: 378 ms) in another.
 * Chunking the prefill in its own process would not give the core back any
 * sooner, so it is not chunked; scheduling prefill chunks into the batch (as vLLM
 * does) would need a prefill whose bits do not depend on the chunking.
 *
 * How sessions meet.  A table of learners in a named segment of dynamic
 * shared memory (the DSM registry: no shared_preload_libraries needed),
 * one entry per session, with a buffer for its logits.  A learner posts its
 * step (token, position, cache) and waits on a condition variable.  Learners
 * of the same group -- database, model, version and SIMD set -- batch
 * together.  A group is served when every learner of it that is generating
 * has posted, but those between steps for more than GRACE_MS: a stream
 * waiting for its client's next FETCH is not waited for.  After a batch its
 * learners sample and post again within a few ms, so they stay together
 * step after step; a new learner joins at its first step, a finished one
 * leaves (continuous batching).
 *
 * Who computes.  The learner whose post completes the group claims every
 * posted step and computes them with its own threads, reading the weights
 * through its own pinned mapping of the shared model (every learner of the
 * group has the same version mapped, weight_store.c): a leader elected
 * among the waiting backends, per batch.  We chose this over a background
 * worker: no shared_preload_libraries, no process to start, map weights
 * into, restart or keep alive; a lone learner computes its own step at once
 * with no hand-off (in fact, a learner whose group has nobody else
 * generating runs gpt2_forward itself, today's path, and nobody waits for
 * it); and the work runs in a process that waits for it anyway.  A first
 * version batched each product by a weight matrix separately (49
 * rendezvous per token for GPT-2 small): on a loaded 2-core machine each
 * rendezvous waited milliseconds for 8 processes to be scheduled, and
 * batching was slower than none.  One rendezvous per step fixed that.
 *
 * With how many threads.  A batch's learners sleep while it is computed:
 * the cores they would have used alone are theirs to lend.  So the server
 * computes a batch with the sum of its learners' pg_llm.threads, at most
 * the cores this process may use (llm_cpu_count: more threads than cores
 * only slow down), and goes back to its own setting after.  A lone learner
 * keeps exactly its own setting; a class whose learners each set
 * pg_llm.threads = 1 (more learners than cores) gets every core for its
 * batches, where each alone would have used one.  The threads split the
 * products by output columns (llm_matmul_rows' tasks, several per thread
 * so that a thread the OS holds up delays a step by part of its share):
 * the bits cannot depend on the split.  (One thread per row, tried first,
 * was slower under load.)  On a machine busy with other work the second
 * thread is a mixed blessing: the pool's join spins while the OS runs
 * someone else on the other core.  Measured on a shared 2-core machine
 * (load 4-8 from other work; 8 and 30 learners, 32 tokens each, two
 * rounds), one thread and this rule were alike within the noise: 8
 * learners 45 and 52 tok/s with one, 78 and 39 with the rule; 30 learners
 * 65 and 69 with one, 64 and 50 with the rule.
 *
 * Isolation.  The server holds off its own cancel while it computes (one
 * step) and reads only numbers from the others: nothing one learner posts
 * can make it fail (if mapping a buffer fails, the steps go back to POSTED
 * for another learner).  A learner that errors or is cancelled while
 * waiting leaves the table (leave(): it first waits, interrupts held, for a
 * server computing its step to finish, since that server writes its KV
 * cache); one that exits does the same (before_shmem_exit).  A learner
 * stopped between steps (SIGSTOP, a debugger) delays its group by GRACE_MS;
 * a server stopped while it computes stalls its batch.
 *
 * Batch invariance.  gpt2_decode_rows computes each row with the kernels
 * and arguments gpt2_forward uses for one token alone, and its products by
 * the weights with llm_matmul_rows, which gives each row the bits of
 * llm_matmul alone (kernels/matmul/gemv_rows.c): a learner's tokens are the
 * same bits alone, in a batch of any size and at any thread count of any
 * server.
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
	int			threads;		/* its pg_llm.threads: what it would use alone */
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

	/* bf16 weights (pg_llm.inference_dtype) decode alone: llm_matmul_rows reads fp32 */
	if (!llm_decode_batching || st->kv == NULL || st->n_past > 0 || m->wte16 != NULL ||
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
 * group's weights, then mark them DONE.  `threads`: the sum of the
 * learners' pg_llm.threads (see serve_threads).
 */
static void
serve(const Gpt2Model *m, const int *rows, int n, int threads)
{
	Gpt2DecodeRow steps[MAX_LEARNERS];
	int			(*hook) (void) = llm_interrupt_hook;
	int			own_threads = llm_pool_threads();
	TimestampTz now;

	map_rows(rows, n, steps);
	/* the others wait for these rows: this backend's cancel waits for them too */
	llm_interrupt_hook = NULL;
	llm_pool_set_threads(Min(threads, llm_cpu_count()));
	gpt2_decode_rows(m, steps, n, scratch);
	llm_pool_set_threads(own_threads);
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

/*
 * Whether another learner of `who`'s group is generating (posted, being
 * served, or between steps for less than GRACE_MS); the lock held.
 */
static bool
others_generating(const Learner *who)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < MAX_LEARNERS; i++)
	{
		const Learner *l = &table->learners[i];

		if (l != who && l->state != ROW_OUT && same_group(l, who) &&
			(l->state == ROW_POSTED || l->state == ROW_CLAIMED ||
			 TimestampTzPlusMilliseconds(l->since, GRACE_MS) > now))
			return true;
	}
	return false;
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
			int			n = 0,
						threads = 0;

			for (int i = 0; i < MAX_LEARNERS; i++)
			{
				Learner    *l = &table->learners[i];

				if (l->state == ROW_POSTED && same_group(l, self))
				{
					l->state = ROW_CLAIMED;
					rows[n++] = i;
					threads += l->threads;
				}
			}
			LWLockRelease(&table->lock);
			serve(m, rows, n, threads);
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
	self->threads = llm_pool_threads();
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

	/* alone: today's step, in this process, with nobody waiting for it */
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	if (!others_generating(self))
	{
		self->state = ROW_OUT;
		LWLockRelease(&table->lock);
		step_alone(st, token, logits);
		/* between steps, as after a batch: a learner arriving now waits for our next */
		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
		self->state = ROW_BETWEEN;
		self->since = GetCurrentTimestamp();
		LWLockRelease(&table->lock);
		n_steps++;
		rows_batched++;
		largest_batch = Max(largest_batch, 1);
		return;
	}
	LWLockRelease(&table->lock);

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
