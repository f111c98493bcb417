/*
 * generate.c -- sampling the next token, and llm_generate_tokens().
 *
 * Generation is a loop: run the prompt through the network once (prefill),
 * then repeatedly pick a token from the last row's logits and run just that
 * token (decode, with the KV cache).  Picking a token:
 *
 *   temperature = 0   greedy: the id of the largest logit (the first one on
 *                     ties, like torch.argmax);
 *   otherwise         p = softmax(logits / temperature), then
 *                       top_k > 0: keep the k most likely tokens,
 *                       top_p < 1: keep the smallest set of most likely
 *                                  tokens whose probability adds up to at
 *                                  least top_p (at least one token),
 *                     and draw from what is left, renormalised.
 *
 * The order -- temperature, top-k, top-p -- and the rules are those of
 * HuggingFace's TemperatureLogitsWarper, TopKLogitsWarper and
 * TopPLogitsWarper.  The random draw comes from our own seeded generator
 * (prng.h): the same seed gives the same tokens, at any thread count.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "gpt2/forward.h"
#include "kernels/prng.h"
#include "tensor/tensor.h"

/* A token still in the running, with its unnormalised probability. */
typedef struct Candidate
{
	int32		id;
	double		weight;
} Candidate;

typedef struct Sampler
{
	double		temperature;	/* 0: greedy */
	int32		top_k;			/* 0: no top-k filter */
	double		top_p;			/* 1: no nucleus filter */
	LlmRng		rng;
	/* scratch of vocab_size entries, allocated once per call */
	float	   *select;			/* a copy of the logits for top-k selection */
	Candidate  *cand;
} Sampler;

/* ---- the pieces of one sampling step ------------------------------------ */

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
 * The k-th largest of x[0 .. n-1] (k >= 1), by quickselect: partition around
 * a pivot, larger values to the left, and continue in the side holding
 * position k-1.  Expected O(n).  Reorders x.
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

/* Most likely first; equal weights by id, so the order is always the same. */
static int
cmp_weight_desc(const void *a, const void *b)
{
	const Candidate *x = a,
			   *y = b;

	if (x->weight != y->weight)
		return x->weight > y->weight ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/*
 * Nucleus (top-p) filter: sort the candidates, most likely first, and keep
 * the shortest prefix whose mass reaches top_p of the total.  A token is
 * kept exactly when the mass of the tokens before it is below top_p, as in
 * HF's TopPLogitsWarper.  Returns how many candidates remain (>= 1).
 */
static int64
nucleus(Candidate *cand, int64 n, double top_p)
{
	double		total = 0,
				cum = 0;
	int64		keep = 0;

	qsort(cand, n, sizeof(Candidate), cmp_weight_desc);
	for (int64 i = 0; i < n; i++)
		total += cand[i].weight;
	while (keep < n && cum < top_p * total)
		cum += cand[keep++].weight;
	return Max(keep, 1);
}

/* Draw one candidate with probability proportional to its weight. */
static int32
draw(Candidate *cand, int64 n, LlmRng *rng)
{
	double		total = 0,
				cum = 0,
				u;
	int32		last_possible = cand[0].id;

	for (int64 i = 0; i < n; i++)
		total += cand[i].weight;
	u = llm_rng_uniform(rng) * total;	/* in [0, total) */
	for (int64 i = 0; i < n; i++)
	{
		if (cand[i].weight <= 0)
			continue;
		cum += cand[i].weight;
		last_possible = cand[i].id;
		if (u < cum)
			return cand[i].id;
	}
	return last_possible;		/* only reached through rounding */
}

/* Error if the network produced NaN or infinity; returns the largest logit. */
static float
checked_max(const Gpt2Model *m, const float *logits, int64 V)
{
	float		max = logits[0];

	for (int64 i = 0; i < V; i++)
	{
		if (!isfinite(logits[i]))
			ereport(ERROR,
					(errcode(ERRCODE_FLOATING_POINT_EXCEPTION),
					 errmsg("model \"%s\" produced a non-finite logit (%s) for token id " INT64_FORMAT,
							m->name, isnan(logits[i]) ? "NaN" : "Infinity", i),
					 errhint("Check the weights for NaN or huge values.")));
		if (logits[i] > max)
			max = logits[i];
	}
	return max;
}

/* Pick the next token from one row of logits [V]. */
static int32
sample_token(Sampler *s, const Gpt2Model *m, const float *logits)
{
	int64		V = m->cfg.vocab_size;
	float		max = checked_max(m, logits, V);
	float		threshold = -INFINITY;	/* keep logits >= threshold */
	int64		n = 0;

	if (s->temperature == 0)
		return argmax(logits, V);

	/* top-k: the k-th largest logit is the bar (ties with it stay, as in HF) */
	if (s->top_k > 0 && s->top_k < V)
	{
		memcpy(s->select, logits, V * sizeof(float));
		threshold = kth_largest(s->select, V, s->top_k);
	}

	/* softmax numerators exp((l - max) / T) of the tokens left */
	for (int64 i = 0; i < V; i++)
	{
		if (logits[i] < threshold)
			continue;
		s->cand[n].id = (int32) i;
		s->cand[n].weight = exp(((double) logits[i] - max) / s->temperature);
		n++;
	}

	if (s->top_p < 1)
		n = nucleus(s->cand, n, s->top_p);
	return draw(s->cand, n, &s->rng);
}

/* ---- the generation loop --------------------------------------------------- */

/*
 * Generate up to max_new (>= 1) tokens after the prompt into out[]; returns
 * how many (fewer when stop_token came up).
 */
static int
generate(const Gpt2Model *m, const int32 *prompt, int n_prompt, int max_new,
		 Sampler *s, bool has_stop, int32 stop_token, int32 *out)
{
	int64		V = m->cfg.vocab_size;
	/* the last generated token is never fed back: it needs no position */
	Gpt2State  *st = gpt2_state_new(m, n_prompt, n_prompt + max_new - 1);
	float	   *logits = llm_alloc_huge(V * sizeof(float), "logits");
	int			n = 0;

	/* Prefill: the whole prompt at once; only its last row's logits matter. */
	gpt2_forward(st, prompt, n_prompt);
	gpt2_logits(st, n_prompt - 1, 1, logits);
	for (;;)
	{
		int32		token = sample_token(s, m, logits);

		out[n++] = token;
		if (n == max_new || (has_stop && token == stop_token))
			break;
		CHECK_FOR_INTERRUPTS();
		/* Decode: one token, attending over everything in the KV cache. */
		gpt2_forward(st, &token, 1);
		gpt2_logits(st, 0, 1, logits);
	}
	pfree(logits);
	gpt2_state_free(st);
	return n;
}

/* ---- SQL ---------------------------------------------------------------- */

/* Read and check the sampling arguments; NULL means the default. */
static void
sampler_from_args(FunctionCallInfo fcinfo, Sampler *s)
{
	uint64		seed;

	s->temperature = PG_ARGISNULL(3) ? 1.0 : PG_GETARG_FLOAT8(3);
	s->top_k = PG_ARGISNULL(4) ? 0 : PG_GETARG_INT32(4);
	s->top_p = PG_ARGISNULL(5) ? 1.0 : PG_GETARG_FLOAT8(5);
	/* No seed: a fresh one from the backend's own random state. */
	seed = PG_ARGISNULL(6) ? pg_prng_uint64(&pg_global_prng_state) : (uint64) PG_GETARG_INT64(6);

	if (!(s->temperature >= 0) || isinf(s->temperature))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_generate_tokens: temperature must be a finite number >= 0, got %g",
						s->temperature),
				 errhint("0 means greedy decoding.")));
	if (s->top_k < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_generate_tokens: top_k must be >= 0, got %d", s->top_k),
				 errhint("0 means no top-k filter.")));
	if (!(s->top_p > 0 && s->top_p <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_generate_tokens: top_p must be in (0, 1], got %g", s->top_p),
				 errhint("1 means no nucleus filter.")));
	llm_rng_seed(&s->rng, seed);
}

/*
 * llm_generate_tokens(model, prompt, max_new_tokens, temperature, top_k,
 *                     top_p, seed, stop_token) -> int[]
 *
 * Returns only the new tokens (HF's generate returns prompt + new).
 * NULL model, prompt or max_new_tokens gives NULL.
 */
PG_FUNCTION_INFO_V1(llm_generate_tokens_sql);
Datum
llm_generate_tokens_sql(PG_FUNCTION_ARGS)
{
	const char *who = "llm_generate_tokens";
	char	   *name;
	int			n_prompt;
	int32	   *prompt;
	int32		max_new;
	bool		has_stop = !PG_ARGISNULL(7);
	int32		stop_token = has_stop ? PG_GETARG_INT32(7) : 0;
	Sampler		s;
	const Gpt2Model *m;
	int32	   *out;
	int			n_out = 0;
	Datum	   *elems;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	prompt = gpt2_token_array(who, "prompt", PG_GETARG_ARRAYTYPE_P(1), &n_prompt);
	max_new = PG_GETARG_INT32(2);
	sampler_from_args(fcinfo, &s);

	if (max_new < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: max_new_tokens must be >= 0, got %d", who, max_new)));
	if (n_prompt == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: the prompt is empty; GPT-2 needs at least one token to start from", who)));

	m = gpt2_model_get(name);
	if ((int64) n_prompt + max_new > m->cfg.n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: a prompt of %d tokens plus %d new tokens is longer than model \"%s\" takes (n_positions = %d)",
						who, n_prompt, max_new, m->name, m->cfg.n_positions)));
	gpt2_check_tokens(who, m, prompt, n_prompt);
	if (has_stop)
		check_token_ids(who, "stop_token", &stop_token, 1, m->cfg.vocab_size, false, "");

	out = palloc(sizeof(int32) * Max(max_new, 1));
	if (max_new > 0)
	{
		s.select = llm_alloc_huge(m->cfg.vocab_size * sizeof(float), "sampling scratch");
		s.cand = llm_alloc_huge(m->cfg.vocab_size * sizeof(Candidate), "sampling scratch");
		n_out = generate(m, prompt, n_prompt, max_new, &s, has_stop, stop_token, out);
	}

	elems = palloc(sizeof(Datum) * Max(n_out, 1));
	for (int i = 0; i < n_out; i++)
		elems[i] = Int32GetDatum(out[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n_out, INT4OID, sizeof(int32), true,
										  TYPALIGN_INT));
}
