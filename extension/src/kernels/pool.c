/*
 * pool.c -- a small pool of worker threads for the heavy kernels.
 *
 * llm_parallel_for(n, grain, fn, ctx) cuts [0, n) into fixed tasks of
 * `grain` items and lets the calling thread and the workers take tasks from
 * a shared counter until none are left.  Because the tasks are the same
 * whatever the number of threads, results are bit-identical at any size.
 *
 * Rules that keep this safe inside a PostgreSQL backend:
 *   - workers are created lazily, in the backend, never in the postmaster;
 *   - workers start with every signal blocked, so PostgreSQL's handlers
 *     only ever run on the backend's own thread;
 *   - workers only touch the plain memory handed to them: no palloc, no
 *     ereport, no PostgreSQL call at all;
 *   - only the calling thread polls llm_interrupt_hook, between tasks.
 */
#include "kernels.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include "simd.h"

#define LLM_MAX_THREADS 256
#define SPIN_ITERATIONS 20000

int			(*llm_interrupt_hook) (void) = 0;

/* A polite busy-wait step. */
static inline void
cpu_relax(void)
{
#if LLM_X86
	__builtin_ia32_pause();
#elif LLM_NEON
	__asm__ __volatile__("yield");
#endif
}

static struct
{
	pthread_mutex_t lock;
	pthread_cond_t wake;		/* workers wait here for a new job */
	pthread_cond_t done;		/* the caller waits here for workers */
	int			nworkers;		/* threads created so far */
	int			nthreads;		/* threads wanted, caller included */

	/* the current job; published under lock, generation bumps per job */
	uint64_t	generation;
	llm_task_fn fn;
	void	   *ctx;
	int64_t		n;
	int64_t		grain;
	int64_t		ntasks;
	int64_t		next_task;		/* atomic */
	int			stop;			/* atomic: interrupted, take no more */
	int			busy;			/* workers still inside the job */
	int			participants;	/* workers taking part in this job */
}			pool = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.wake = PTHREAD_COND_INITIALIZER,
	.done = PTHREAD_COND_INITIALIZER,
	.nthreads = 1,
};

int
llm_cpu_count(void)
{
	/* Linux: the cores this process may run on (taskset, a container's cpuset) */
#if defined(__linux__) && defined(CPU_COUNT)
	cpu_set_t	set;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
#endif
	/* elsewhere (macOS, the BSDs): the cores online */
	{
		long		n = sysconf(_SC_NPROCESSORS_ONLN);

		return n > 0 ? (int) n : 1;
	}
}

/* Take tasks until none are left (or stop is set); returns when done. */
static void
run_tasks(llm_task_fn fn, void *ctx, int64_t n, int64_t grain, int64_t ntasks,
		  int poll_interrupts)
{
	for (;;)
	{
		int64_t		t;
		int64_t		begin,
					end;

		if (__atomic_load_n(&pool.stop, __ATOMIC_ACQUIRE))
			return;
		if (poll_interrupts && llm_interrupt_hook && llm_interrupt_hook())
		{
			__atomic_store_n(&pool.stop, 1, __ATOMIC_RELEASE);
			return;
		}
		t = __atomic_fetch_add(&pool.next_task, 1, __ATOMIC_ACQ_REL);
		if (t >= ntasks)
			return;
		begin = t * grain;
		end = begin + grain < n ? begin + grain : n;
		fn(ctx, begin, end);
	}
}

static void *
worker_main(void *arg)
{
	int			id = (int) (intptr_t) arg;
	uint64_t	seen = 0;

	for (;;)
	{
		llm_task_fn fn;
		void	   *ctx;
		int64_t		n,
					grain,
					ntasks;
		int			spins = 0;

		/* Spin briefly: back-to-back kernels (decoding) avoid a futex wake. */
		while (__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) == seen &&
			   spins < SPIN_ITERATIONS)
		{
			cpu_relax();
			/* let the caller's thread run if the OS put us on its core */
			if (++spins % 64 == 0)
				sched_yield();
		}
		pthread_mutex_lock(&pool.lock);
		while (pool.generation == seen)
			pthread_cond_wait(&pool.wake, &pool.lock);
		seen = pool.generation;
		if (id >= pool.participants)
		{
			pthread_mutex_unlock(&pool.lock);
			continue;
		}
		fn = pool.fn;
		ctx = pool.ctx;
		n = pool.n;
		grain = pool.grain;
		ntasks = pool.ntasks;
		pthread_mutex_unlock(&pool.lock);

		run_tasks(fn, ctx, n, grain, ntasks, 0);

		pthread_mutex_lock(&pool.lock);
		if (__atomic_sub_fetch(&pool.busy, 1, __ATOMIC_RELEASE) == 0)
			pthread_cond_signal(&pool.done);
		pthread_mutex_unlock(&pool.lock);
	}
	return 0;
}

/* Create workers up to nthreads - 1, with every signal blocked. */
static void
ensure_workers(int nthreads)
{
	sigset_t	all,
				old;

	if (pool.nworkers >= nthreads - 1)
		return;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	while (pool.nworkers < nthreads - 1)
	{
		pthread_t	th;

		if (pthread_create(&th, 0, worker_main, (void *) (intptr_t) pool.nworkers) != 0)
			break;				/* fewer workers is slower, never wrong */
		pthread_detach(th);
		pool.nworkers++;
	}
	pthread_sigmask(SIG_SETMASK, &old, 0);
}

void
llm_pool_set_threads(int nthreads)
{
	if (nthreads < 1)
		nthreads = 1;
	if (nthreads > LLM_MAX_THREADS)
		nthreads = LLM_MAX_THREADS;
	pool.nthreads = nthreads;
}

int
llm_pool_threads(void)
{
	return pool.nthreads;
}

int
llm_parallel_for(int64_t n, int64_t grain, llm_task_fn fn, void *ctx)
{
	int64_t		ntasks;
	int			helpers;

	if (n <= 0)
		return LLM_OK;
	if (grain < 1)
		grain = 1;
	ntasks = (n + grain - 1) / grain;

	if (ntasks == 1 || pool.nthreads == 1)
	{
		/* Inline, still checking for interrupts between tasks. */
		int64_t		t;

		for (t = 0; t < ntasks; t++)
		{
			int64_t		end = (t + 1) * grain < n ? (t + 1) * grain : n;

			if (t > 0 && llm_interrupt_hook && llm_interrupt_hook())
				return LLM_INTERRUPTED;
			fn(ctx, t * grain, end);
		}
		return LLM_OK;
	}

	ensure_workers(pool.nthreads);
	helpers = pool.nthreads - 1;
	if (helpers > pool.nworkers)
		helpers = pool.nworkers;
	if (helpers > ntasks - 1)
		helpers = (int) (ntasks - 1);

	pthread_mutex_lock(&pool.lock);
	pool.fn = fn;
	pool.ctx = ctx;
	pool.n = n;
	pool.grain = grain;
	pool.ntasks = ntasks;
	pool.next_task = 0;
	pool.stop = 0;
	pool.participants = helpers;
	pool.busy = helpers;
	__atomic_add_fetch(&pool.generation, 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&pool.wake);
	pthread_mutex_unlock(&pool.lock);

	run_tasks(fn, ctx, n, grain, ntasks, 1);

	/*
	 * Wait for the workers' last tasks: spin first (they usually finish
	 * within microseconds, and a sleeping caller can take far longer to
	 * wake), then sleep on the condition variable.
	 */
	for (int spins = 0; spins < SPIN_ITERATIONS &&
		 __atomic_load_n(&pool.busy, __ATOMIC_ACQUIRE) > 0; spins++)
	{
		cpu_relax();
		/* as the workers: a worker the OS put on our core gets to finish */
		if (spins % 64 == 63)
			sched_yield();
	}
	pthread_mutex_lock(&pool.lock);
	while (pool.busy > 0)
		pthread_cond_wait(&pool.done, &pool.lock);
	pthread_mutex_unlock(&pool.lock);

	return pool.stop ? LLM_INTERRUPTED : LLM_OK;
}
