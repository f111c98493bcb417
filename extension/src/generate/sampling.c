/*
 * sampling.c -- the next token from a row of logits, as HuggingFace's
 * generate() picks it, and llm_sampling_probs() to look at the distribution.
 *
 * The logits go through, in HF's order (its LogitsProcessorList for
 * do_sample=True):
 *
 *   repetition_penalty  RepetitionPenaltyLogitsProcessor: the logit of every
 *                       id already in the text (prompt and generated) is
 *                       divided by the penalty if positive, multiplied by it
 *                       if negative;
 *   temperature = 0     greedy: the id of the largest logit (the first one on
 *                       ties, like torch.argmax) -- nothing below applies;
 *   temperature         TemperatureLogitsWarper: logits / temperature;
 *   top_k > 0           TopKLogitsWarper: keep the tokens whose logit is at
 *                       least the k-th largest (ties with it stay);
 *   top_p < 1           TopPLogitsWarper: sort by probability, keep a token
 *                       when the probability of the tokens before it is
 *                       below top_p (so at least one token stays);
 *
 * and the draw is from softmax of what is left.  Arithmetic on the logits is
 * float32, like PyTorch's on a float32 tensor (x / t rounds the same way);
 * probabilities are double.  A temperature too small or too large for
 * float32's logits / temperature (where HF's scores turn to NaN) gives the
 * limit: greedy (ties sharing), or uniform.  Among tokens with equal logits at the top-p
 * boundary the lower id is kept (HF's order there comes from an unstable
 * sort).  The random draw comes from our seeded generator (prng.h): the same
 * seed gives the same tokens on every machine, at any thread count.
 */
#include "postgres.h"

#include <math.h>

#include "common/pg_prng.h"
#include "fmgr.h"
#include "utils/array.h"

#include "tensor/tensor.h"
#include "generate/sampling.h"

/* ---- arguments -------------------------------------------------------------- */

void
sampling_check_params(const char *who, const SamplingParams *p)
{
	if (!(p->temperature >= 0) || isinf(p->temperature))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: temperature must be a finite number >= 0, got %g", who, p->temperature),
				 errhint("0 means greedy decoding.")));
	if (p->top_k < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: top_k must be >= 0, got %d", who, p->top_k),
				 errhint("0 means no top-k filter.")));
	if (!(p->top_p > 0 && p->top_p <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: top_p must be in (0, 1], got %g", who, p->top_p),
				 errhint("1 means no nucleus filter.")));
	if (!(p->repetition_penalty > 0) || isinf(p->repetition_penalty))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: repetition_penalty must be a finite number > 0, got %g",
						who, p->repetition_penalty),
				 errhint("1 means no penalty; above 1 discourages repeating a token.")));
	/* it divides or multiplies float32 logits: as a float32 neither 0 nor infinite */
	check_float32_divisor(who, "repetition_penalty", p->repetition_penalty);
}

void
check_float32_divisor(const char *who, const char *what, double value)
{
	float		f = (float) value;

	if (f == 0 || isinf(f))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s: %s %g is out of float32's range", who, what, value),
				 errhint("The logits are float32; so is what divides them.")));
}

SamplingParams
sampling_params_from_args(FunctionCallInfo fcinfo, int temperature_argno,
						  int repetition_penalty_argno)
{
	SamplingParams p;
	int			t = temperature_argno;
	int			r = repetition_penalty_argno;

	p.temperature = PG_ARGISNULL(t) ? 1.0 : PG_GETARG_FLOAT8(t);
	p.top_k = PG_ARGISNULL(t + 1) ? 0 : PG_GETARG_INT32(t + 1);
	p.top_p = PG_ARGISNULL(t + 2) ? 1.0 : PG_GETARG_FLOAT8(t + 2);
	p.repetition_penalty = (r < 0 || PG_ARGISNULL(r)) ? 1.0 : PG_GETARG_FLOAT8(r);
	return p;
}

uint64
sampling_seed_from_arg(FunctionCallInfo fcinfo, int argno)
{
	/* No seed: a fresh one from the backend's own random state. */
	if (PG_ARGISNULL(argno))
		return pg_prng_uint64(&pg_global_prng_state);
	return (uint64) PG_GETARG_INT64(argno);
}

Sampler *
sampler_new(const SamplingParams *p, int64 V, uint64 seed)
{
	Sampler    *s = palloc0(sizeof(Sampler));

	s->params = *p;
	s->vocab_size = V;
	llm_rng_seed(&s->rng, seed);
	s->seen = palloc0(V * sizeof(bool));
	s->scores = llm_alloc_floats(1, V, "sampling scratch");
	s->select = llm_alloc_floats(1, V, "sampling scratch");
	s->cand = llm_alloc_huge(V * sizeof(SamplingCandidate), "sampling scratch");
	return s;
}

void
sampler_saw(Sampler *s, const int32 *ids, int n)
{
	for (int i = 0; i < n; i++)
		if (ids[i] >= 0 && ids[i] < s->vocab_size)
			s->seen[ids[i]] = true;
}

/* ---- the filters -------------------------------------------------------------- */

/* Index of the largest value, the first one on ties (torch.argmax). */
static int32
argmax(const float *x, int64 n)
{
	int64		best = 0;

	for (int64 i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return (int32) best;
}

/*
 * The k-th largest of x[0 .. n-1] (1 <= k <= n), by quickselect: partition
 * around a pivot, larger values to the left, and continue in the side
 * holding position k-1.  Expected O(n).  Reorders x.
 */
static float
kth_largest(float *x, int64 n, int64 k)
{
	int64		lo = 0,
				hi = n - 1,
				want = k - 1;

	while (lo < hi)
	{
		float		pivot = x[lo + (hi - lo) / 2];
		int64		i = lo,
					j = hi;

		while (i <= j)
		{
			while (x[i] > pivot)
				i++;
			while (x[j] < pivot)
				j--;
			if (i <= j)
			{
				float		tmp = x[i];

				x[i++] = x[j];
				x[j--] = tmp;
			}
		}
		if (want <= j)
			hi = j;
		else if (want >= i)
			lo = i;
		else
			return x[want];		/* between j and i: equal to the pivot */
	}
	return x[want];
}

/* The order of the nucleus: most likely first, equal ones by id. */
static inline bool
more_likely(const SamplingCandidate *a, const SamplingCandidate *b)
{
	return a->p > b->p || (a->p == b->p && a->id < b->id);
}

static int
cmp_more_likely(const void *a, const void *b)
{
	return more_likely(a, b) ? -1 : more_likely(b, a) ? 1 : 0;
}

static inline void
swap_cand(SamplingCandidate *a, SamplingCandidate *b)
{
	SamplingCandidate tmp = *a;

	*a = *b;
	*b = tmp;
}

/*
 * Move the m most likely of c[0 .. n-1] to c[0 .. m-1] (in no order), by
 * quickselect under more_likely(), a strict total order (ids differ).
 */
static void
select_most_likely(SamplingCandidate *c, int64 n, int64 m)
{
	int64		lo = 0,
				hi = n - 1;

	while (lo < hi)
	{
		int64		store = lo;

		swap_cand(&c[lo + (hi - lo) / 2], &c[hi]);	/* pivot to the end */
		for (int64 i = lo; i < hi; i++)
			if (more_likely(&c[i], &c[hi]))
				swap_cand(&c[i], &c[store++]);
		swap_cand(&c[store], &c[hi]);	/* the pivot is the store-th */
		if (store == m - 1 || store == m)
			return;
		if (store > m)
			hi = store - 1;
		else
			lo = store + 1;
	}
}

/*
 * Nucleus filter over c[0 .. n-1] (weights in .p, total `total`): moves the
 * kept tokens to the front, most likely first, and returns how many.  Only
 * the head of the order is sorted: the m most likely (m = 256, 1024, ...)
 * are selected and sorted until the boundary falls among them.
 */
static int64
nucleus(SamplingCandidate *c, int64 n, double total, double top_p)
{
	double		bar = top_p * total;

	for (int64 m = Min(n, 256);; m = Min(n, m * 4))
	{
		double		before = 0;

		if (m < n)
			select_most_likely(c, n, m);
		qsort(c, m, sizeof(SamplingCandidate), cmp_more_likely);
		for (int64 i = 0; i < m; i++)
		{
			if (i > 0 && before >= bar)
				return i;
			before += c[i].p;
		}
		if (m == n)
			return n;
	}
}

/* Copy the logits into s->scores, refusing NaN and +Infinity; apply the penalty. */
static void
load_scores(Sampler *s, const char *who, const float *logits)
{
	int64		V = s->vocab_size;
	float		penalty = (float) s->params.repetition_penalty;

	for (int64 i = 0; i < V; i++)
	{
		float		x = logits[i];

		if (isnan(x) || (isinf(x) && x > 0))
			ereport(ERROR,
					(errcode(ERRCODE_FLOATING_POINT_EXCEPTION),
					 errmsg("%s: a non-finite logit (%s) for token id " INT64_FORMAT,
							who, isnan(x) ? "NaN" : "Infinity", i),
					 errhint("Check the weights for NaN or huge values.")));
		if (s->seen[i] && penalty != 1.0f)
			x = x < 0 ? x * penalty : x / penalty;
		s->scores[i] = x;
	}
}

int64
sampler_filter(Sampler *s, const char *who, const float *logits)
{
	const SamplingParams *p = &s->params;
	int64		V = s->vocab_size;
	float	   *scores = s->scores;
	float		threshold = -INFINITY;	/* top-k keeps scores >= threshold */
	float		max;
	float		t32;
	double		divisor = 1.0;	/* of the softmax's exponent */
	double		total = 0;
	int64		n = 0;

	load_scores(s, who, logits);
	max = scores[argmax(scores, V)];
	if (max == -INFINITY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: every logit is -Infinity: no token can be drawn", who)));
	if (p->temperature == 0)
	{
		s->cand[0].id = argmax(scores, V);
		s->cand[0].p = 1.0;
		return 1;
	}

	/*
	 * logits / temperature in float32, as HF divides them; where float32
	 * cannot (a temperature that is 0 or infinite as a float32, or a logit
	 * whose quotient overflows) the softmax below divides in double instead:
	 * near 0 that is greedy, ties sharing; near infinity, uniform.
	 */
	t32 = (float) p->temperature;
	if (t32 != 0 && !isinf(t32) && !isinf(max / t32))
	{
		for (int64 i = 0; i < V; i++)
			scores[i] = scores[i] / t32;
		max = max / t32;
	}
	else
		divisor = p->temperature;

	if (p->top_k > 0 && p->top_k < V)
	{
		memcpy(s->select, scores, V * sizeof(float));
		threshold = kth_largest(s->select, V, p->top_k);
	}

	/* softmax numerators of the tokens left (probability 0 is never drawn) */
	for (int64 i = 0; i < V; i++)
	{
		double		w;

		if (scores[i] < threshold)
			continue;
		w = exp(((double) scores[i] - max) / divisor);
		if (w == 0)
			continue;
		s->cand[n].id = (int32) i;
		s->cand[n].p = w;
		total += w;
		n++;
	}

	if (p->top_p < 1)
	{
		n = nucleus(s->cand, n, total, p->top_p);
		total = 0;
		for (int64 i = 0; i < n; i++)
			total += s->cand[i].p;
	}
	for (int64 i = 0; i < n; i++)
		s->cand[i].p /= total;
	return n;
}

/* Draw one candidate with its probability. */
static int32
draw(const SamplingCandidate *cand, int64 n, LlmRng *rng)
{
	double		total = 0,
				cum = 0,
				u;

	for (int64 i = 0; i < n; i++)
		total += cand[i].p;
	u = llm_rng_uniform(rng) * total;	/* in [0, total) */
	for (int64 i = 0; i < n; i++)
	{
		cum += cand[i].p;
		if (u < cum)
			return cand[i].id;
	}
	return cand[n - 1].id;		/* only reached through rounding */
}

int32
sampler_next(Sampler *s, const char *who, const float *logits)
{
	int64		n = sampler_filter(s, who, logits);
	int32		token = n == 1 ? s->cand[0].id : draw(s->cand, n, &s->rng);

	s->seen[token] = true;
	return token;
}

/* ---- SQL ---------------------------------------------------------------------- */

/*
 * llm_sampling_probs(logits tensor, temperature, top_k, top_p,
 *                    repetition_penalty, previous int[]) -> tensor
 *
 * The probabilities a token is drawn with, for each row of logits ([V] or
 * [rows, V]): 0 for the tokens the filters remove.  `previous` are the ids
 * the repetition penalty applies to.  NULL logits give NULL.
 */
PG_FUNCTION_INFO_V1(llm_sampling_probs_sql);
Datum
llm_sampling_probs_sql(PG_FUNCTION_ARGS)
{
	const char *who = "llm_sampling_probs";
	Tensor	   *logits;
	Tensor	   *out;
	SamplingParams p;
	Sampler    *s;
	int64		V,
				rows;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	logits = PG_GETARG_TENSOR_P(0);
	p = sampling_params_from_args(fcinfo, 1, 4);
	sampling_check_params(who, &p);
	if (logits->ndim > 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: logits must be [vocab] or [rows, vocab], got %s",
						who, tensor_shape_str(logits))));
	V = tensor_cols(logits);
	rows = tensor_rows(logits);
	if (V > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: a vocabulary of " INT64_FORMAT " tokens is too large", who, V)));

	s = sampler_new(&p, V, 0);
	if (!PG_ARGISNULL(5))
	{
		int			n_prev;
		int32	   *prev = int_array_values(who, "previous", PG_GETARG_ARRAYTYPE_P(5), 1, &n_prev);

		check_token_ids(who, "previous token id", prev, n_prev, V, false, "");
		sampler_saw(s, prev, n_prev);
	}

	out = tensor_new_like(logits);
	memset(out->data, 0, tensor_numel(out) * sizeof(float));
	for (int64 r = 0; r < rows; r++)
	{
		int64		n = sampler_filter(s, who, logits->data + r * V);

		for (int64 i = 0; i < n; i++)
			out->data[r * V + s->cand[i].id] = (float) s->cand[i].p;
	}
	PG_RETURN_TENSOR_P(out);
}
