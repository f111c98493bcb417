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

#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/memutils.h"

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

#define MAX_LEARNERS 64
#define MODEL_NAME_LEN 64

typedef enum RowState
{
	ROW_OUT,					/* not in a step */
	ROW_BETWEEN,				/* in a step, computing its own part */
	ROW_POSTED,					/* its row for `phase` waits in its buffer */
	ROW_CLAIMED,				/* a server is computing it */
	ROW_DONE					/* the result is in its buffer */
} RowState;

typedef struct Learner
{
	int			pid;			/* 0: the entry is free (once state is OUT) */
	RowState	state;
	bool		leaving;		/* left while CLAIMED: the server sets OUT, not DONE */
	/* the group: learners that may share a batch */
	Oid			dboid;
	Oid			config_relid;
	int64		version;
	int			isa;
	char		model[MODEL_NAME_LEN];
	/* the posted product */
	int			phase;
	dsa_pointer buf;			/* the entry's: input row, then output row */
	int64		in_floats;		/* room for the input row; the output follows */
	int64		out_floats;
	int			batch_rows;		/* rows of the batch that computed it (set when DONE) */
} Learner;

typedef struct BatchTable
{
	LWLock		lock;			/* guards everything below */
	int			tranche_id;
	ConditionVariable changed;	/* a learner posted, left, or got its result */
	dsa_handle	area;			/* DSA_HANDLE_INVALID until the first buffer */
	Learner		learners[MAX_LEARNERS];
} BatchTable;

static BatchTable *table = NULL;
static dsa_area *area = NULL;
static int	me = -1;			/* this backend's entry, once it has one */

/* this backend's products since batch_report(): how many, how many shared, the largest batch */
static int64 n_products = 0;
static int64 n_shared = 0;
static int64 rows_batched = 0;	/* the sum of their batches' rows */
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

/* ---- phases: which weight matrix a product reads ------------------------------ */

static int
phase_of(const Gpt2Model *m, const float *w)
{
	for (int l = 0; l < m->cfg.n_layer; l++)
	{
		const Gpt2Layer *L = &m->layers[l];

		if (w == L->attn_w)
			return 4 * l;
		if (w == L->attn_proj_w)
			return 4 * l + 1;
		if (w == L->fc_w)
			return 4 * l + 2;
		if (w == L->mlp_proj_w)
			return 4 * l + 3;
	}
	return w == m->wte ? 4 * m->cfg.n_layer : -1;
}

/* The product of phase `p`: W, bias, its [K, N] and whether W is stored [N, K]. */
static void
phase_product(const Gpt2Model *m, int p, const float **w, const float **bias,
			  int64 *K, int64 *N, int *transB)
{
	int64		C = m->cfg.n_embd,
				F = m->cfg.n_inner;
	const Gpt2Layer *L = &m->layers[p / 4];

	*transB = 0;
	if (p == 4 * m->cfg.n_layer)
	{
		*w = m->wte, *bias = NULL, *K = C, *N = m->cfg.vocab_size, *transB = 1;
		return;
	}
	switch (p % 4)
	{
		case 0:
			*w = L->attn_w, *bias = L->attn_b, *K = C, *N = 3 * C;
			break;
		case 1:
			*w = L->attn_proj_w, *bias = L->attn_proj_b, *K = C, *N = C;
			break;
		case 2:
			*w = L->fc_w, *bias = L->fc_b, *K = C, *N = F;
			break;
		default:
			*w = L->mlp_proj_w, *bias = L->mlp_proj_b, *K = F, *N = C;
			break;
	}
}

/* ---- the table (the lock held where said) ---------------------------------------- */

static bool
same_group(const Learner *a, const Learner *b)
{
	return a->dboid == b->dboid && a->config_relid == b->config_relid &&
		a->version == b->version && a->isa == b->isa && strcmp(a->model, b->model) == 0;
}

/*
 * The lock held: the phase to serve for `who`'s group, or -1 while some
 * learner of the group in a step is not POSTED.
 */
static int
ready_phase(const Learner *who)
{
	int			phase = INT_MAX;

	for (int i = 0; i < MAX_LEARNERS; i++)
	{
		const Learner *l = &table->learners[i];

		if (l->state == ROW_OUT || !same_group(l, who))
			continue;
		if (l->state != ROW_POSTED)
			return -1;
		phase = Min(phase, l->phase);
	}
	return phase == INT_MAX ? -1 : phase;
}

static float *
buffer_of(const Learner *l)
{
	return dsa_get_address(area, l->buf);
}

/* Leave the step; the lock not held.  Also at exit. */
static void
leave(void)
{
	Learner    *l;

	if (me < 0)
		return;
	l = &table->learners[me];
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	if (l->state == ROW_CLAIMED)
		l->leaving = true;
	else
		l->state = ROW_OUT;
	LWLockRelease(&table->lock);
	/* whoever waited for this learner to post may go on */
	ConditionVariableBroadcast(&table->changed);
}

static void
leave_at_exit(int code, Datum arg)
{
	ConditionVariableCancelSleep();
	leave();
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	table->learners[me].pid = 0;
	LWLockRelease(&table->lock);
	me = -1;
}

/*
 * The input and output rows of the CLAIMED entries `rows`, in this backend's
 * mapping; on an error (mapping a buffer) they go back to POSTED, for
 * another learner to serve.
 */
static void
map_rows(const int *rows, int n, const float **a, float **c)
{
	PG_TRY();
	{
		for (int i = 0; i < n; i++)
		{
			const Learner *l = &table->learners[rows[i]];

			a[i] = buffer_of(l);
			c[i] = buffer_of(l) + l->in_floats;
		}
	}
	PG_CATCH();
	{
		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
		for (int i = 0; i < n; i++)
		{
			Learner    *l = &table->learners[rows[i]];

			l->state = l->leaving ? ROW_OUT : ROW_POSTED;
			l->leaving = false;
		}
		LWLockRelease(&table->lock);
		ConditionVariableBroadcast(&table->changed);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * Compute the rows CLAIMED by this backend at phase `p`, with this
 * backend's mapping of the group's weights; then mark them DONE (or OUT,
 * for those that left meanwhile).
 */
static void
serve(const Gpt2Model *m, int p, const int *rows, int n)
{
	const float *a[MAX_LEARNERS];
	float	   *c[MAX_LEARNERS];
	const float *w,
			   *bias;
	int64		K,
				N;
	int			transB,
				rc;
	int			(*hook) (void) = llm_interrupt_hook;

	phase_product(m, p, &w, &bias, &K, &N, &transB);
	map_rows(rows, n, a, c);

	/* the others wait for these rows: this backend's cancel waits for them too */
	llm_interrupt_hook = NULL;
	rc = llm_matmul_rows(a, w, bias, c, n, K, N, transB);
	llm_interrupt_hook = hook;
	Assert(rc == LLM_OK);
	(void) rc;

	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		Learner    *l = &table->learners[rows[i]];

		l->state = l->leaving ? ROW_OUT : ROW_DONE;
		l->leaving = false;
		l->batch_rows = n;
	}
	LWLockRelease(&table->lock);
	ConditionVariableBroadcast(&table->changed);
}

/* The hook of forward.c while a step runs: post the row, wait, maybe serve. */
static void
batch_row_matmul(const Gpt2Model *m, const float *a, const float *w, const float *bias,
				 float *out, int64 K, int64 N, int transB)
{
	Learner    *self = &table->learners[me];
	int			phase = phase_of(m, w);

	if (phase < 0)
	{
		/* not one of the model's matrices (nothing in forward.c today) */
		llm_check_status(llm_matmul(a, w, bias, out, 1, K, N, 0, transB));
		return;
	}
	memcpy(buffer_of(self), a, K * sizeof(float));

	ConditionVariablePrepareToSleep(&table->changed);
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	self->phase = phase;
	self->state = ROW_POSTED;
	for (;;)
	{
		int			p;

		if (self->state == ROW_DONE)
		{
			self->state = ROW_BETWEEN;
			n_products++;
			n_shared += self->batch_rows > 1;
			rows_batched += self->batch_rows;
			largest_batch = Max(largest_batch, self->batch_rows);
			break;
		}
		p = ready_phase(self);
		if (p >= 0)
		{
			int			rows[MAX_LEARNERS];
			int			n = 0;

			for (int i = 0; i < MAX_LEARNERS; i++)
			{
				Learner    *l = &table->learners[i];

				if (l->state == ROW_POSTED && l->phase == p && same_group(l, self))
				{
					l->state = ROW_CLAIMED;
					rows[n++] = i;
				}
			}
			LWLockRelease(&table->lock);
			serve(m, p, rows, n);
		}
		else
		{
			LWLockRelease(&table->lock);
			ConditionVariableSleep(&table->changed, PG_WAIT_EXTENSION);
		}
		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	}
	LWLockRelease(&table->lock);
	ConditionVariableCancelSleep();
	memcpy(out, buffer_of(self) + self->in_floats, N * sizeof(float));
}

/*
 * Take an entry of the table (once per backend) with room for `m`'s rows,
 * and enter a step; false when batching cannot be used (the table is full,
 * the model's name is too long).
 */
static bool
join(const Gpt2Model *m)
{
	int64		C = m->cfg.n_embd,
				F = m->cfg.n_inner;
	int64		in_floats = Max(C, F),
				out_floats = Max(Max(3 * C, F), (int64) m->cfg.vocab_size);
	Learner    *self;

	if (strlen(m->name) >= MODEL_NAME_LEN)
		return false;
	if (table == NULL)
	{
		bool		found;

		table = GetNamedDSMSegment("pg_llm decode batch", sizeof(BatchTable), init_table,
								   &found);
		LWLockRegisterTranche(table->tranche_id, "pg_llm decode batch");
	}
	if (area == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
		if (table->area == DSA_HANDLE_INVALID)
		{
			area = dsa_create(table->tranche_id);
			dsa_pin(area);
			table->area = dsa_get_handle(area);
		}
		LWLockRelease(&table->lock);
		if (area == NULL)
			area = dsa_attach(table->area);
		dsa_pin_mapping(area);
		MemoryContextSwitchTo(old);
	}
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

	/* a row of this entry CLAIMED when it left is being finished into its buffer */
	ConditionVariablePrepareToSleep(&table->changed);
	for (;;)
	{
		bool		busy;

		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
		busy = self->state != ROW_OUT;
		LWLockRelease(&table->lock);
		if (!busy)
			break;
		ConditionVariableSleep(&table->changed, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();

	/* the buffer: nobody else reads it while this entry is OUT */
	if (self->buf == InvalidDsaPointer || self->in_floats < in_floats ||
		self->out_floats < out_floats)
	{
		dsa_pointer old = self->buf;

		in_floats = Max(in_floats, self->in_floats);
		out_floats = Max(out_floats, self->out_floats);
		self->buf = dsa_allocate(area, (in_floats + out_floats) * sizeof(float));
		self->in_floats = in_floats;
		self->out_floats = out_floats;
		if (old != InvalidDsaPointer)
			dsa_free(area, old);
	}

	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	self->dboid = MyDatabaseId;
	self->config_relid = m->config_relid;
	self->version = m->version;
	self->isa = (int) llm_cpu_isa();
	strlcpy(self->model, m->name, MODEL_NAME_LEN);
	self->leaving = false;
	self->state = ROW_BETWEEN;
	LWLockRelease(&table->lock);
	return true;
}

/* Out of the batch: after the step, or on its way out with an error. */
static void
end_step(void)
{
	gpt2_row_matmul_hook = NULL;
	ConditionVariableCancelSleep();
	leave();
}

/* A step in the batch: leaves it however the step ends. */
static void
step_batched(Gpt2State *st, const int32 *token, float *logits)
{
	PG_TRY();
	{
		gpt2_row_matmul_hook = batch_row_matmul;
		step_alone(st, token, logits);
	}
	PG_CATCH();
	{
		end_step();
		PG_RE_THROW();
	}
	PG_END_TRY();
	end_step();
}

void
batch_decode_step(Gpt2State *st, const int32 *token, float *logits)
{
	if (llm_decode_batching && join(st->model))
		step_batched(st, token, logits);
	else
		step_alone(st, token, logits);
}

void
batch_report(void)
{
	if (n_products > 0)
		elog(DEBUG1, "pg_llm decode batching: " INT64_FORMAT " products by the weights, "
			 INT64_FORMAT " of them in a batch with other sessions (%.1f rows on average, "
			 "largest batch: %d rows)",
			 n_products, n_shared, (double) rows_batched / n_products, largest_batch);
	n_products = n_shared = rows_batched = 0;
	largest_batch = 0;
}

#else							/* PostgreSQL 15-16: every step alone */

void
batch_decode_step(Gpt2State *st, const int32 *token, float *logits)
{
	step_alone(st, token, logits);
}

void
batch_report(void)
{
}

#endif							/* DECODE_BATCHING */
