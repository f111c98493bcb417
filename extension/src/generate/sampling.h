/*
 * sampling.h -- picking the next token from a row of logits (sampling.c),
 * with HuggingFace's semantics:
 *
 *   SamplingParams p = {.temperature = 0.8, .top_k = 40, .top_p = 0.95,
 *                       .repetition_penalty = 1.0};
 *   sampling_check_params("llm_generate", &p);
 *   Sampler *s = sampler_new(&p, vocab_size, seed);
 *   sampler_saw(s, prompt, n_prompt);         (the ids the penalty applies to)
 *   int32 next = sampler_next(s, logits);     (also counts `next` as seen)
 *
 * sampler_filter() exposes the distribution a draw comes from
 * (llm_sampling_probs in SQL).
 */
#ifndef PG_LLM_GENERATE_SAMPLING_H
#define PG_LLM_GENERATE_SAMPLING_H

#include "postgres.h"

#include "fmgr.h"

#include "kernels/prng.h"

typedef struct SamplingParams
{
	double		temperature;	/* 0: greedy (argmax) */
	int32		top_k;			/* 0: no top-k filter */
	double		top_p;			/* 1: no nucleus filter */
	double		repetition_penalty; /* 1: none */
} SamplingParams;

/* A token still in the running and its probability (or weight). */
typedef struct SamplingCandidate
{
	int32		id;
	double		p;
} SamplingCandidate;

typedef struct Sampler
{
	SamplingParams params;
	int64		vocab_size;
	LlmRng		rng;
	bool	   *seen;			/* [V] ids the repetition penalty applies to */
	float	   *scores;			/* [V] the processed logits */
	float	   *select;			/* [V] scratch of the k-th largest search */
	SamplingCandidate *cand;	/* [V] */
} Sampler;

/*
 * Error 22023 naming the first bad value (who: the SQL function); 22003 for
 * a repetition_penalty that is 0 or infinite as a float32.
 */
extern void sampling_check_params(const char *who, const SamplingParams *p);

/* Error 22003 if value, as a float32, is 0 or infinite. */
extern void check_float32_divisor(const char *who, const char *what, double value);

/* Read the sampling arguments at argno.. (temperature, top_k, top_p); NULL = default. */
extern SamplingParams sampling_params_from_args(FunctionCallInfo fcinfo, int temperature_argno,
												int repetition_penalty_argno);

/* The seed argument at argno, or a fresh random seed when it is NULL. */
extern uint64 sampling_seed_from_arg(FunctionCallInfo fcinfo, int argno);

/* A sampler for a vocabulary of V tokens, its scratch in the current context. */
extern Sampler *sampler_new(const SamplingParams *p, int64 V, uint64 seed);

/* Count ids as already in the text (for the repetition penalty). */
extern void sampler_saw(Sampler *s, const int32 *ids, int n);

/*
 * The distribution of the next token: fills s->cand[0 .. n-1] with the
 * tokens left after the filters and their probabilities (summing to 1),
 * returns n >= 1.  Greedy decoding leaves one token with probability 1.
 * Errors on NaN or +Infinity logits (who names the caller).
 */
extern int64 sampler_filter(Sampler *s, const char *who, const float *logits);

/* Draw the next token (seeded), and count it as seen. */
extern int32 sampler_next(Sampler *s, const char *who, const float *logits);

#endif							/* PG_LLM_GENERATE_SAMPLING_H */
