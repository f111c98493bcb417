/*
 * beam_search.h -- beam search over GPT-2 (beam_search.c), as HuggingFace's
 * generate(num_beams=..., do_sample=False) computes it.
 *
 *   BeamParams p = {.beam_width = 4, .max_new = 20, .length_penalty = 1.0,
 *                   .early_stopping = EARLY_STOPPING_HEURISTIC,
 *                   .num_return = 4, .repetition_penalty = 1.0};
 *   beam_params_check("llm_beam_search", &p);
 *   BeamResult r = beam_search(who, model, prompt, n_prompt, &p, eos, n_eos);
 *   r.hyps[0 .. r.n-1]: best first
 */
#ifndef PG_LLM_GENERATE_BEAM_SEARCH_H
#define PG_LLM_GENERATE_BEAM_SEARCH_H

#include "postgres.h"

#include "fmgr.h"

#include "gpt2/model_cache.h"

/* HF's early_stopping: False (the default), True, "never". */
typedef enum EarlyStopping
{
	EARLY_STOPPING_HEURISTIC,	/* 'false': stop when no running beam can
								 * beat the finished ones at its current
								 * length */
	EARLY_STOPPING_TRUE,		/* 'true': stop once beam_width hypotheses
								 * are finished */
	EARLY_STOPPING_NEVER		/* 'never': the canonical rule, over the
								 * longest possible length */
} EarlyStopping;

#define BEAM_WIDTH_MAX 256

typedef struct BeamParams
{
	int			beam_width;
	int			max_new;		/* new tokens at most */
	double		length_penalty; /* score = sum log p / length^length_penalty */
	EarlyStopping early_stopping;
	int			num_return;		/* hypotheses returned, 1 .. beam_width */
	double		repetition_penalty; /* on the log-probabilities, as HF */
} BeamParams;

typedef struct BeamHyp
{
	float		score;			/* length-penalised, as HF's sequences_scores */
	int32	   *tokens;			/* the new tokens, the stop id included */
	int			len;
} BeamHyp;

typedef struct BeamResult
{
	int			n;				/* finished hypotheses, <= num_return */
	BeamHyp    *hyps;			/* best first */
} BeamResult;

/*
 * The params from the SQL arguments at these positions (NULL: the default;
 * beam_width and max_tokens must not be NULL).
 */
extern BeamParams beam_params_from_args(FunctionCallInfo fcinfo, const char *who,
										int beam_width_argno, int max_new_argno,
										int length_penalty_argno, int early_stopping_argno,
										int num_return_argno, int repetition_penalty_argno);

/* Error 22023 naming the first bad value. */
extern void beam_params_check(const char *who, const BeamParams *p);

/*
 * Search: the prompt must be non-empty, checked against the model, and fit
 * with max_new new tokens.  Generation of a hypothesis ends at any of eos.
 */
extern BeamResult beam_search(const char *who, const Gpt2Model *m, const int32 *prompt,
							  int n_prompt, const BeamParams *p, const int32 *eos, int n_eos);

#endif							/* PG_LLM_GENERATE_BEAM_SEARCH_H */
