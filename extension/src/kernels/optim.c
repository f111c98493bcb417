/*
 * optim.c -- what every optimizer step needs besides the update itself: the
 * chunks of a parameter arena, sums of squares, gradient clipping as
 * torch.nn.utils.clip_grad_norm_ does it, and nanoGPT's learning-rate
 * schedule.  See optim.h.
 */
#include "optim.h"

#include <math.h>
#include <stdlib.h>

/* ---- chunks ------------------------------------------------------------------ */

int
llm_chunks_init(LlmChunks *c, const LlmParamRange *ranges, int n_ranges)
{
	int64_t		k = 0;

	c->ranges = ranges;
	c->n_ranges = n_ranges;
	c->first = malloc(sizeof(int64_t) * (size_t) (n_ranges + 1));
	if (c->first == 0)
		return LLM_NOMEM;
	for (int r = 0; r < n_ranges; r++)
	{
		c->first[r] = k;
		k += (ranges[r].numel + LLM_OPTIM_CHUNK - 1) / LLM_OPTIM_CHUNK;
	}
	c->first[n_ranges] = k;
	c->n_chunks = k;
	return LLM_OK;
}

void
llm_chunks_free(LlmChunks *c)
{
	free(c->first);
	c->first = 0;
}

int
llm_chunk_at(const LlmChunks *c, int64_t k, int64_t *begin, int64_t *end)
{
	/* the last range whose first chunk is <= k (empty ranges own none) */
	int			lo = 0,
				hi = c->n_ranges - 1;
	const LlmParamRange *r;
	int64_t		start;

	while (lo < hi)
	{
		int			mid = lo + (hi - lo + 1) / 2;

		if (c->first[mid] <= k)
			lo = mid;
		else
			hi = mid - 1;
	}
	r = &c->ranges[lo];
	start = (k - c->first[lo]) * LLM_OPTIM_CHUNK;
	*begin = r->offset + start;
	*end = r->offset + (start + LLM_OPTIM_CHUNK < r->numel ? start + LLM_OPTIM_CHUNK : r->numel);
	return lo;
}

void
llm_chunks_combine(const LlmChunks *c, const double *partial, double *sums)
{
	for (int r = 0; r < c->n_ranges; r++)
	{
		double		s = 0.0;

		for (int64_t k = c->first[r]; k < c->first[r + 1]; k++)
			s += partial[k];
		sums[r] = s;
	}
}

/* ---- sums of squares ------------------------------------------------------------ */

/*
 * The sum of x[i]^2 over [begin, end) in double, in eight interleaved
 * partial sums (lane j takes i = j, j + 8, ...) combined pairwise: a fixed
 * order that keeps eight additions in flight.
 */
static double
sum_squares(const float *x, int64_t begin, int64_t end)
{
	double		lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	int64_t		i = begin;

	for (; i + 8 <= end; i += 8)
		for (int j = 0; j < 8; j++)
			lane[j] += (double) x[i + j] * (double) x[i + j];
	for (int j = 0; i < end; i++, j++)
		lane[j] += (double) x[i] * (double) x[i];
	return ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
		((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

typedef struct SquaresCtx
{
	const float *x;
	const LlmChunks *chunks;
	double	   *partial;		/* [n_chunks] */
} SquaresCtx;

static void
squares_task(void *arg, int64_t k0, int64_t k1)
{
	SquaresCtx *c = arg;

	for (int64_t k = k0; k < k1; k++)
	{
		int64_t		begin,
					end;

		llm_chunk_at(c->chunks, k, &begin, &end);
		c->partial[k] = sum_squares(c->x, begin, end);
	}
}

int
llm_sum_squares(const float *x, const LlmParamRange *ranges, int n_ranges, double *sq)
{
	LlmChunks	chunks;
	SquaresCtx	c;
	int			status;

	if (llm_chunks_init(&chunks, ranges, n_ranges) != LLM_OK)
		return LLM_NOMEM;
	c.x = x;
	c.chunks = &chunks;
	c.partial = malloc(sizeof(double) * (size_t) (chunks.n_chunks + 1));
	if (c.partial == 0)
	{
		llm_chunks_free(&chunks);
		return LLM_NOMEM;
	}
	status = llm_parallel_for(chunks.n_chunks, 1, squares_task, &c);
	if (status == LLM_OK)
		llm_chunks_combine(&chunks, c.partial, sq);
	free(c.partial);
	llm_chunks_free(&chunks);
	return status;
}

/* ---- scaling and clipping --------------------------------------------------------- */

typedef struct ScaleCtx
{
	float	   *x;
	const LlmChunks *chunks;
	float		s;
} ScaleCtx;

static void
scale_task(void *arg, int64_t k0, int64_t k1)
{
	ScaleCtx   *c = arg;

	for (int64_t k = k0; k < k1; k++)
	{
		int64_t		begin,
					end;

		llm_chunk_at(c->chunks, k, &begin, &end);
		for (int64_t i = begin; i < end; i++)
			c->x[i] *= c->s;
	}
}

int
llm_scale_ranges(float *x, const LlmParamRange *ranges, int n_ranges, float s)
{
	LlmChunks	chunks;
	ScaleCtx	c = {x, &chunks, s};
	int			status;

	if (llm_chunks_init(&chunks, ranges, n_ranges) != LLM_OK)
		return LLM_NOMEM;
	status = llm_parallel_for(chunks.n_chunks, 1, scale_task, &c);
	llm_chunks_free(&chunks);
	return status;
}

float
llm_clip_coef(float total, double max_norm)
{
	/* torch: max_norm / (total_norm + 1e-6), clamped to at most 1 */
	float		coef = (1.0f / (total + (float) 1e-6)) * (float) max_norm;

	return coef > 1.0f ? 1.0f : coef;
}

int
llm_clip_grad_norm(float *grads, const LlmParamRange *ranges, int n_ranges,
				   double max_norm, float *norms, float *total)
{
	double	   *sq = malloc(sizeof(double) * (size_t) (n_ranges + 1));
	double		total_sq = 0.0;
	int			status;

	if (sq == 0)
		return LLM_NOMEM;
	status = llm_sum_squares(grads, ranges, n_ranges, sq);
	if (status != LLM_OK)
	{
		free(sq);
		return status;
	}

	/* the norm of the per-tensor norms, each rounded to float32 as torch's are */
	for (int r = 0; r < n_ranges; r++)
	{
		float		norm = (float) sqrt(sq[r]);

		if (norms)
			norms[r] = norm;
		total_sq += (double) norm * (double) norm;
	}
	free(sq);
	*total = (float) sqrt(total_sq);

	if (max_norm <= 0)
		return LLM_OK;
	return llm_scale_ranges(grads, ranges, n_ranges, llm_clip_coef(*total, max_norm));
}

/* ---- the learning-rate schedule ----------------------------------------------------- */

/* nanoGPT's get_lr(it), expression for expression. */
static double
nanogpt_get_lr(const LlmLrSchedule *s, int64_t it)
{
	double		decay_ratio,
				coeff;

	if (it < s->warmup_steps)
		return s->lr * (double) (it + 1) / (double) (s->warmup_steps + 1);
	if (it > s->decay_steps)
		return s->min_lr;
	decay_ratio = (double) (it - s->warmup_steps) / (double) (s->decay_steps - s->warmup_steps);
	coeff = 0.5 * (1.0 + cos(M_PI * decay_ratio));
	return s->min_lr + coeff * (s->lr - s->min_lr);
}

double
llm_lr_at(const LlmLrSchedule *s, int64_t it)
{
	if (s->lr == 0.0)
		return 0.0;
	/* LambdaLR: base_lr * lr_lambda(it), with lr_lambda = get_lr(it) / base_lr */
	return s->lr * (nanogpt_get_lr(s, it) / s->lr);
}
