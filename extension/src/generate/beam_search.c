/*
 * beam_search.c -- beam search over GPT-2, step for step the algorithm of
 * HuggingFace's GenerationMixin._beam_search (transformers 4.50+ / 5.x):
 *
 *   - beam_width running beams, each a sequence with its sum of token
 *     log-probabilities (float32, as HF), log_softmax of the logits first,
 *     then the repetition penalty (on the log-probabilities, as HF's
 *     processors run after log_softmax in beam search);
 *   - at the first step only beam 0 is live (the others score -1e9), as
 *     all beams hold the same prompt;
 *   - each step keeps the K = max(2, 1 + number of stop ids) * beam_width
 *     best continuations over all beams; a continuation ending in a stop
 *     id, or reaching max_tokens, is finished: among the first beam_width
 *     of the K it may enter the finished list with score
 *     sum / length^length_penalty (length counts the new tokens, the stop
 *     id included); the best beam_width unfinished ones run on;
 *   - early_stopping 'false' (HF's default) stops when the best running
 *     beam, scored at its current length, cannot beat the worst finished
 *     hypothesis; 'true' stops once beam_width hypotheses are finished;
 *     'never' scores the running beam at the longest length it may reach
 *     (when length_penalty > 0);
 *   - "may not be chosen" is HF's -1e9 added to a score, so that the same
 *     float32 arithmetic picks the same hypotheses.
 *
 * Ties between equal scores go to the lower index (beam-major, then token
 * id); torch.topk's order among ties is unspecified.  Each beam has its own
 * KV cache; when beams fork, caches are moved or copied
 * (gpt2_state_copy_cache), never recomputed.
 *
 * Also the SQL function llm_beam_search_tokens().
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

#include "gpt2/forward.h"
#include "pg_llm.h"
#include "generate/beam_search.h"
#include "generate/generate.h"
#include "generate/prompt.h"
#include "generate/sampling.h"
#include "tensor/tensor.h"

/* HF's score for what may not be chosen (added, in float32). */
#define NOT_POSSIBLE (-1.0e9f)

/* ---- arguments ------------------------------------------------------------------ */

static EarlyStopping
early_stopping_from_text(const char *who, const char *s)
{
	if (pg_strcasecmp(s, "false") == 0)
		return EARLY_STOPPING_HEURISTIC;
	if (pg_strcasecmp(s, "true") == 0)
		return EARLY_STOPPING_TRUE;
	if (pg_strcasecmp(s, "never") == 0)
		return EARLY_STOPPING_NEVER;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s: early_stopping must be 'false', 'true' or 'never', got '%s'", who, s),
			 errhint("These are the values of HuggingFace's early_stopping; 'false' is its default.")));
}

BeamParams
beam_params_from_args(FunctionCallInfo fcinfo, const char *who,
					  int beam_width_argno, int max_new_argno,
					  int length_penalty_argno, int early_stopping_argno,
					  int num_return_argno, int repetition_penalty_argno)
{
	BeamParams	p;

	p.beam_width = PG_GETARG_INT32(beam_width_argno);
	p.max_new = PG_GETARG_INT32(max_new_argno);
	p.length_penalty = PG_ARGISNULL(length_penalty_argno) ? 1.0 :
		PG_GETARG_FLOAT8(length_penalty_argno);
	p.early_stopping = PG_ARGISNULL(early_stopping_argno) ? EARLY_STOPPING_HEURISTIC :
		early_stopping_from_text(who,
								 text_to_cstring(PG_GETARG_TEXT_PP(early_stopping_argno)));
	p.num_return = PG_ARGISNULL(num_return_argno) ? p.beam_width :
		PG_GETARG_INT32(num_return_argno);
	p.repetition_penalty = PG_ARGISNULL(repetition_penalty_argno) ? 1.0 :
		PG_GETARG_FLOAT8(repetition_penalty_argno);
	return p;
}

void
beam_params_check(const char *who, const BeamParams *p)
{
	if (p->beam_width < 1 || p->beam_width > BEAM_WIDTH_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: beam_width must be between 1 and %d, got %d",
						who, BEAM_WIDTH_MAX, p->beam_width)));
	if (p->max_new < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: max_tokens must be >= 1, got %d", who, p->max_new)));
	if (!isfinite(p->length_penalty))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: length_penalty must be a finite number, got %g", who, p->length_penalty)));
	if (p->num_return < 1 || p->num_return > p->beam_width)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: num_return must be between 1 and beam_width (%d), got %d",
						who, p->beam_width, p->num_return)));
	if (!(p->repetition_penalty > 0) || isinf(p->repetition_penalty))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: repetition_penalty must be a finite number > 0, got %g",
						who, p->repetition_penalty)));
	check_float32_divisor(who, "repetition_penalty", p->repetition_penalty);
}

/* ---- the search ---------------------------------------------------------------- */

/* A continuation: beam * V + token, and its summed log-probability. */
typedef struct Continuation
{
	float		score;
	int64		flat;
} Continuation;

/* Higher score first, then the lower index. */
static inline bool
ranks_before(float score_a, int64 index_a, float score_b, int64 index_b)
{
	return score_a > score_b || (score_a == score_b && index_a < index_b);
}

/* Insert c into best[0 .. *n - 1], kept sorted, at most k entries. */
static void
keep_best(Continuation *best, int *n, int k, Continuation c)
{
	int			i;

	if (*n == k && !ranks_before(c.score, c.flat, best[k - 1].score, best[k - 1].flat))
		return;
	i = *n < k ? (*n)++ : k - 1;
	while (i > 0 && ranks_before(c.score, c.flat, best[i - 1].score, best[i - 1].flat))
	{
		best[i] = best[i - 1];
		i--;
	}
	best[i] = c;
}

static int
cmp_ranks_before(const void *a, const void *b, void *arg)
{
	const float *scores = arg;
	int			i = *(const int *) a,
				j = *(const int *) b;

	return ranks_before(scores[i], i, scores[j], j) ? -1 :
		ranks_before(scores[j], j, scores[i], i) ? 1 : 0;
}

/* The indices 0 .. n-1 ordered by scores, best first, into out[n]. */
static void
best_indices(const float *scores, int n, int *out)
{
	for (int i = 0; i < n; i++)
		out[i] = i;
	qsort_arg(out, n, sizeof(int), cmp_ranks_before, (void *) scores);
}

typedef struct Search
{
	const char *who;
	const Gpt2Model *m;
	const BeamParams *p;
	int64		V;
	int			B;				/* beam width */
	int			K;				/* continuations kept per step */
	const int32 *prompt;
	int			n_prompt;
	const int32 *eos;
	int			n_eos;

	/* running beams */
	Gpt2State **states;			/* [B] KV caches; NULL until a beam needs one */
	float	   *run_score;		/* [B] */
	int32	   *run_tokens;		/* [B][max_new] */
	float	   *logits;			/* [B][V] next-token logits of each beam */

	/* finished hypotheses, best first (HF's sequences, beam_scores) */
	float	   *fin_score;		/* [B] */
	int32	   *fin_tokens;		/* [B][max_new] */
	int		   *fin_len;		/* [B] */
	bool	   *fin_done;		/* [B] false: a placeholder */
	bool		improvement_possible;	/* HF's is_early_stop_heuristic_unsatisfied */

	/* the continuations of one step */
	Continuation *top;			/* [K] */
	int			n_top;
	int		   *parent;			/* [K] */
	int32	   *token;			/* [K] */
	bool	   *hit;			/* [K] ends here: a stop id or max_new */

	/* scratch */
	float	   *logp;			/* [V] */
	bool	   *seen;			/* [V] */
	float	   *merged;			/* [B + K] */
	int		   *pick;			/* [B + K] */
	int32	   *tokens_tmp;		/* [B][max_new] */
} Search;

static bool
is_eos(const Search *s, int32 token)
{
	for (int i = 0; i < s->n_eos; i++)
		if (s->eos[i] == token)
			return true;
	return false;
}

/*
 * logp = log_softmax of beam b's logits, then the repetition penalty over
 * the prompt and the beam's tokens (at most once per id, as HF's scatter).
 */
static void
beam_log_probs(Search *s, int b, int t)
{
	const float *x = s->logits + (t == 0 ? 0 : b) * s->V;
	const int32 *mine = s->run_tokens + (int64) b * s->p->max_new;
	float		penalty = (float) s->p->repetition_penalty;
	float		max = x[0];
	double		sum = 0,
				lse;

	for (int64 v = 0; v < s->V; v++)
	{
		if (!isfinite(x[v]))
			ereport(ERROR,
					(errcode(ERRCODE_FLOATING_POINT_EXCEPTION),
					 errmsg("%s: a non-finite logit (%s) for token id " INT64_FORMAT,
							s->who, isnan(x[v]) ? "NaN" : "Infinity", v),
					 errhint("Check the weights for NaN or huge values.")));
		max = Max(max, x[v]);
	}
	for (int64 v = 0; v < s->V; v++)
		sum += exp((double) x[v] - max);
	lse = max + log(sum);
	for (int64 v = 0; v < s->V; v++)
		s->logp[v] = (float) ((double) x[v] - lse);

	if (penalty == 1.0f)
		return;
	for (int i = 0; i < s->n_prompt; i++)
		s->seen[s->prompt[i]] = true;
	for (int i = 0; i < t; i++)
		s->seen[mine[i]] = true;
	for (int i = 0; i < s->n_prompt + t; i++)
	{
		int32		id = i < s->n_prompt ? s->prompt[i] : mine[i - s->n_prompt];
		float	   *l = &s->logp[id];

		if (!s->seen[id])
			continue;			/* done already */
		*l = *l < 0 ? *l * penalty : *l / penalty;
		s->seen[id] = false;
	}
}

/* The K best continuations of all beams into s->top, and what each ends. */
static bool
gather_continuations(Search *s, int t)
{
	bool		all_hit = true;

	s->n_top = 0;
	for (int b = 0; b < s->B; b++)
	{
		beam_log_probs(s, b, t);
		for (int64 v = 0; v < s->V; v++)
		{
			Continuation c = {s->run_score[b] + s->logp[v], b * s->V + v};

			keep_best(s->top, &s->n_top, s->K, c);
		}
	}
	for (int i = 0; i < s->n_top; i++)
	{
		s->parent[i] = (int) (s->top[i].flat / s->V);
		s->token[i] = (int32) (s->top[i].flat % s->V);
		s->hit[i] = t + 1 >= s->p->max_new || is_eos(s, s->token[i]);
		all_hit &= s->hit[i];
	}
	return all_hit;
}

static bool
all_finished(const Search *s)
{
	for (int j = 0; j < s->B; j++)
		if (!s->fin_done[j])
			return false;
	return true;
}

/* HF's _update_finished_beams: the best B of the finished list and the new ones. */
static void
update_finished(Search *s, int t)
{
	int			B = s->B,
				max_new = s->p->max_new;
	float		length = (float) pow(t + 1, s->p->length_penalty);
	bool		full = s->p->early_stopping == EARLY_STOPPING_TRUE && all_finished(s);
	float	   *new_score = palloc(sizeof(float) * B);
	int		   *new_len = palloc(sizeof(int) * B);
	bool	   *new_done = palloc(sizeof(bool) * B);

	for (int j = 0; j < B; j++)
		s->merged[j] = s->fin_score[j];
	for (int i = 0; i < s->n_top; i++)
	{
		float		score = s->top[i].score / length;

		if (full)
			score += NOT_POSSIBLE;
		if (!s->improvement_possible)
			score += NOT_POSSIBLE;
		if (!(s->hit[i] && i < B))
			score += NOT_POSSIBLE;
		s->merged[B + i] = score;
	}
	best_indices(s->merged, B + s->n_top, s->pick);

	for (int j = 0; j < B; j++)
	{
		int			k = s->pick[j];
		int32	   *dst = s->tokens_tmp + (int64) j * max_new;

		new_score[j] = s->merged[k];
		if (k < B)
		{
			memcpy(dst, s->fin_tokens + (int64) k * max_new, sizeof(int32) * s->fin_len[k]);
			new_len[j] = s->fin_len[k];
			new_done[j] = s->fin_done[k];
		}
		else
		{
			int			i = k - B;

			memcpy(dst, s->run_tokens + (int64) s->parent[i] * max_new, sizeof(int32) * t);
			dst[t] = s->token[i];
			new_len[j] = t + 1;
			new_done[j] = s->hit[i] && i < B;
		}
	}
	memcpy(s->fin_tokens, s->tokens_tmp, sizeof(int32) * B * max_new);
	memcpy(s->fin_score, new_score, sizeof(float) * B);
	memcpy(s->fin_len, new_len, sizeof(int) * B);
	memcpy(s->fin_done, new_done, sizeof(bool) * B);
	pfree(new_score);
	pfree(new_len);
	pfree(new_done);
}

/*
 * HF's _get_running_beams_for_next_iteration: the best B continuations, the
 * finished ones pushed down by -1e9.  Fills src[j], the beam new beam j
 * continues, and its token.
 */
static void
next_running(Search *s, int t, int *src, int32 *tokens)
{
	int			B = s->B,
				max_new = s->p->max_new;

	for (int i = 0; i < s->n_top; i++)
		s->merged[i] = s->top[i].score + (s->hit[i] ? NOT_POSSIBLE : 0.0f);
	best_indices(s->merged, s->n_top, s->pick);
	for (int j = 0; j < B; j++)
	{
		int			i = s->pick[j];
		int32	   *dst = s->tokens_tmp + (int64) j * max_new;

		src[j] = s->parent[i];
		tokens[j] = s->token[i];
		memcpy(dst, s->run_tokens + (int64) src[j] * max_new, sizeof(int32) * t);
		dst[t] = tokens[j];
		s->run_score[j] = s->merged[i];
	}
	memcpy(s->run_tokens, s->tokens_tmp, sizeof(int32) * B * max_new);
}

/* HF's _check_early_stop_heuristic, after t + 1 tokens. */
static void
check_improvement_possible(Search *s, int t)
{
	double		best_length = (s->p->early_stopping == EARLY_STOPPING_NEVER &&
							   s->p->length_penalty > 0) ? s->p->max_new : t + 1;
	float		best_running = s->run_score[0] / (float) pow(best_length, s->p->length_penalty);
	float		worst_finished = s->fin_score[0];
	bool		any = false;

	for (int j = 1; j < s->B; j++)
		worst_finished = Min(worst_finished, s->fin_score[j]);
	for (int j = 0; j < s->B; j++)
		any |= best_running > (s->fin_done[j] ? worst_finished : NOT_POSSIBLE);
	s->improvement_possible &= any;
}

/*
 * Give new beam j the KV cache of beam src[j] (at t = 0 every beam is the
 * prompt, in states[0]): the first taker of a cache gets it, the others a
 * copy into a cache nobody took.  Then run each beam's new token.
 */
static void
advance(Search *s, int t, const int *src, const int32 *tokens)
{
	int			B = s->B;
	Gpt2State **next = palloc0(sizeof(Gpt2State *) * B);
	int		   *taker = palloc(sizeof(int) * B);
	int			free_b = 0;

	for (int b = 0; b < B; b++)
		taker[b] = -1;
	for (int j = 0; j < B; j++)
	{
		int			b = t == 0 ? 0 : src[j];

		if (taker[b] < 0)
		{
			taker[b] = j;
			next[j] = s->states[b];
		}
	}
	for (int j = 0; j < B; j++)
	{
		Gpt2State  *st;

		if (next[j] != NULL)
			continue;
		while (taker[free_b] >= 0)
			free_b++;
		st = s->states[free_b++];
		if (st == NULL)
			st = gpt2_state_new(s->m, 1, s->n_prompt + s->p->max_new - 1);
		gpt2_state_copy_cache(st, s->states[t == 0 ? 0 : src[j]]);
		next[j] = st;
	}
	memcpy(s->states, next, sizeof(Gpt2State *) * B);
	for (int j = 0; j < B; j++)
	{
		CHECK_FOR_INTERRUPTS();
		gpt2_forward(s->states[j], &tokens[j], 1);
		gpt2_logits(s->states[j], 0, 1, s->logits + j * s->V);
	}
	pfree(next);
	pfree(taker);
}

static Search *
search_new(const char *who, const Gpt2Model *m, const int32 *prompt, int n_prompt,
		   const BeamParams *p, const int32 *eos, int n_eos)
{
	Search	   *s = palloc0(sizeof(Search));
	int			B = p->beam_width;
	int64		V = m->cfg.vocab_size;

	s->who = who;
	s->m = m;
	s->p = p;
	s->V = V;
	s->B = B;
	s->K = Max(2, 1 + n_eos) * B;
	s->prompt = prompt;
	s->n_prompt = n_prompt;
	s->eos = eos;
	s->n_eos = n_eos;

	s->states = palloc0(sizeof(Gpt2State *) * B);
	s->run_score = palloc(sizeof(float) * B);
	s->run_tokens = palloc0(sizeof(int32) * B * p->max_new);
	s->logits = llm_alloc_floats(B, V, "beam logits");
	s->fin_score = palloc(sizeof(float) * B);
	s->fin_tokens = palloc0(sizeof(int32) * B * p->max_new);
	s->fin_len = palloc0(sizeof(int) * B);
	s->fin_done = palloc0(sizeof(bool) * B);
	s->top = palloc(sizeof(Continuation) * s->K);
	s->parent = palloc(sizeof(int) * s->K);
	s->token = palloc(sizeof(int32) * s->K);
	s->hit = palloc(sizeof(bool) * s->K);
	s->logp = llm_alloc_floats(1, V, "beam log-probabilities");
	s->seen = palloc0(sizeof(bool) * V);
	s->merged = palloc(sizeof(float) * (B + s->K));
	s->pick = palloc(sizeof(int) * (B + s->K));
	s->tokens_tmp = palloc0(sizeof(int32) * B * p->max_new);

	/* only beam 0 is live at first: the beams are copies of one prompt */
	for (int j = 0; j < B; j++)
	{
		s->run_score[j] = j == 0 ? 0.0f : NOT_POSSIBLE;
		s->fin_score[j] = NOT_POSSIBLE;
	}
	s->improvement_possible = true;
	return s;
}

BeamResult
beam_search(const char *who, const Gpt2Model *m, const int32 *prompt, int n_prompt,
			const BeamParams *p, const int32 *eos, int n_eos)
{
	Search	   *s;
	int		   *src = palloc(sizeof(int) * p->beam_width);
	int32	   *tokens = palloc(sizeof(int32) * p->beam_width);
	BeamResult	r;

	beam_params_check(who, p);
	if (n_prompt == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: the prompt is empty; GPT-2 needs at least one token to start from", who)));
	if ((int64) n_prompt + p->max_new > m->cfg.n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: a prompt of %d tokens plus %d new tokens is longer than model \"%s\" takes (n_positions = %d)",
						who, n_prompt, p->max_new, m->name, m->cfg.n_positions)));
	gpt2_check_tokens(who, m, prompt, n_prompt);
	check_stop_ids(who, m, eos, n_eos);

	s = search_new(who, m, prompt, n_prompt, p, eos, n_eos);
	s->states[0] = gpt2_state_new(m, n_prompt, n_prompt + p->max_new - 1);
	gpt2_forward(s->states[0], prompt, n_prompt);
	gpt2_logits(s->states[0], n_prompt - 1, 1, s->logits);

	for (int t = 0;; t++)
	{
		bool		all_hit = gather_continuations(s, t);
		bool		go_on;

		update_finished(s, t);
		next_running(s, t, src, tokens);
		check_improvement_possible(s, t);
		go_on = s->improvement_possible && !all_hit &&
			!(s->p->early_stopping == EARLY_STOPPING_TRUE && all_finished(s));
		if (!go_on)
			break;
		advance(s, t, src, tokens);
	}
	for (int b = 0; b < s->B; b++)
		if (s->states[b] != NULL)
			gpt2_state_free(s->states[b]);

	r.n = 0;
	r.hyps = palloc(sizeof(BeamHyp) * p->num_return);
	for (int j = 0; j < p->num_return; j++)
	{
		if (!s->fin_done[j])
			continue;
		r.hyps[r.n].score = s->fin_score[j];
		r.hyps[r.n].len = s->fin_len[j];
		r.hyps[r.n].tokens = palloc(sizeof(int32) * Max(s->fin_len[j], 1));
		memcpy(r.hyps[r.n].tokens, s->fin_tokens + (int64) j * p->max_new,
			   sizeof(int32) * s->fin_len[j]);
		r.n++;
	}
	return r;
}

/* ---- SQL ---------------------------------------------------------------------- */

/* One row per hypothesis: rank, score, tokens (and text when tok is given). */
static void
return_hyps(FunctionCallInfo fcinfo, const BeamResult *r, const LlmTokenizer *tok,
			const Gpt2Model *m, const int32 *eos, int n_eos)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	for (int i = 0; i < r->n; i++)
	{
		const BeamHyp *h = &r->hyps[i];
		Datum	   *elems = palloc(sizeof(Datum) * Max(h->len, 1));
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		for (int k = 0; k < h->len; k++)
			elems[k] = Int32GetDatum(h->tokens[k]);
		values[0] = Int32GetDatum(i + 1);
		values[1] = Float8GetDatum(h->score);
		values[2] = PointerGetDatum(construct_array(elems, h->len, INT4OID, sizeof(int32), true,
													TYPALIGN_INT));
		if (tok != NULL)
		{
			int			n = h->len;
			StringInfoData text;

			/* a stop id ends the tokens, not the text */
			for (int e = 0; e < n_eos && n > 0; e++)
				if (h->tokens[n - 1] == eos[e])
				{
					n--;
					break;
				}
			for (int k = 0; k < n; k++)
				check_decodable("llm_beam_search", tok, m, h->tokens[k]);
			initStringInfo(&text);
			llm_bpe_decode_text(tok, h->tokens, n, &text);
			values[3] = PointerGetDatum(utf8_to_text(text.data, text.len));
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

/*
 * llm_beam_search_tokens(model, prompt int[], beam_width, max_tokens,
 *                        length_penalty, early_stopping, stop_ids,
 *                        num_return, repetition_penalty)
 *     -> SETOF (rank int, score double precision, tokens int[])
 *
 * The num_return (default beam_width) best finished hypotheses, rank 1
 * first; tokens are the new ones, a stop id included.  NULL model, prompt,
 * beam_width or max_tokens: no rows.
 */
PG_FUNCTION_INFO_V1(llm_beam_search_tokens_sql);
Datum
llm_beam_search_tokens_sql(PG_FUNCTION_ARGS)
{
	const char *who = "llm_beam_search_tokens";
	int			n_prompt,
				n_eos = 0;
	int32	   *prompt;
	int32	   *eos = NULL;
	const Gpt2Model *m;
	BeamParams	p;
	BeamResult	r;

	InitMaterializedSRF(fcinfo, 0);
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		return (Datum) 0;
	prompt = int_array_values(who, "prompt", PG_GETARG_ARRAYTYPE_P(1), 1, &n_prompt);
	if (!PG_ARGISNULL(6))
		eos = int_array_values(who, "stop_ids", PG_GETARG_ARRAYTYPE_P(6), 1, &n_eos);
	p = beam_params_from_args(fcinfo, who, 2, 3, 4, 5, 7, 8);
	beam_params_check(who, &p);

	m = gpt2_model_get(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	r = beam_search(who, m, prompt, n_prompt, &p, eos, n_eos);
	return_hyps(fcinfo, &r, NULL, m, eos, n_eos);
	return (Datum) 0;
}

/*
 * llm_beam_search(prompt text, beam_width, max_tokens, model, length_penalty,
 *                 early_stopping, stop_ids, num_return, repetition_penalty)
 *     -> SETOF (rank int, score double precision, tokens int[], text text)
 *
 * llm_beam_search_tokens from a text prompt (cut from the left to fit, as
 * llm_generate's), with <|endoftext|> as the stop id by default; `text` is
 * the decoded tokens, without the stop id.  NULL prompt, beam_width or
 * max_tokens: no rows.
 */
PG_FUNCTION_INFO_V1(llm_beam_search_sql);
Datum
llm_beam_search_sql(PG_FUNCTION_ARGS)
{
	const char *who = "llm_beam_search";
	const char *model;
	const Gpt2Model *m;
	const LlmTokenizer *tok;
	int			n_prompt,
				n_eos;
	int32	   *prompt;
	int32	   *eos;
	BeamParams	p;
	BeamResult	r;

	InitMaterializedSRF(fcinfo, 0);
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		return (Datum) 0;
	model = llm_model_or_default(who, PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3)));
	p = beam_params_from_args(fcinfo, who, 1, 2, 4, 5, 7, 8);
	beam_params_check(who, &p);
	m = gpt2_model_get(model);
	tok = llm_tokenizer_get(model);
	prompt = prompt_ids(who, tok, m, PG_GETARG_TEXT_PP(0), p.max_new, &n_prompt);
	eos = stop_ids_or_eot(fcinfo, 6, who, tok, m, &n_eos);

	r = beam_search(who, m, prompt, n_prompt, &p, eos, n_eos);
	return_hyps(fcinfo, &r, tok, m, eos, n_eos);
	return (Datum) 0;
}
