/*
 * generate.h -- token-by-token generation (generate.c): the prompt through
 * GPT-2 once (prefill), then one token at a time (decode, with the KV
 * cache), each picked by a Sampler.
 *
 *   Generator *g = generator_new("llm_generate", gpt2_model_get(name), prompt, n,
 *                                max_new, &params, seed, stop_ids, n_stop);
 *   while (generator_next(g, &token))
 *       ... use token; generator_finished(g) says whether it was the last ...
 *   generator_free(g);
 *
 * A generator that lives across calls (a streaming SRF) is made in memory
 * that lives as long, with weights gpt2_model_get() gave in that memory:
 * they stay in place as long as the generator.
 */
#ifndef PG_LLM_GENERATE_GENERATE_H
#define PG_LLM_GENERATE_GENERATE_H

#include "postgres.h"

#include "gpt2/forward.h"
#include "generate/sampling.h"

typedef struct Generator
{
	const char *who;			/* the SQL function, for messages */
	const Gpt2Model *model;
	Gpt2State  *state;
	Sampler    *sampler;
	float	   *logits;			/* [V] */
	int32	   *prompt;
	int			n_prompt;
	int32	   *stop_ids;		/* generation ends after any of these */
	int			n_stop;
	int			max_new;
	int			n_new;			/* tokens generated so far */
	int32		last;			/* the last of them (fed at the next step) */
	bool		stopped;		/* the last token was a stop id */
} Generator;

/*
 * Check the arguments against the model (generator_check_args, and
 * max_new >= 1) and set up; no forward yet.
 */
extern Generator *generator_new(const char *who, const Gpt2Model *m,
								const int32 *prompt, int n_prompt, int max_new,
								const SamplingParams *params, uint64 seed,
								const int32 *stop_ids, int n_stop);

/*
 * The checks of generator_new() that need no max_new >= 1: the prompt is
 * non-empty, in the vocabulary and fits with max_new new tokens; the stop
 * ids are in the vocabulary (error 22023).
 */
extern void generator_check_args(const char *who, const Gpt2Model *m, const int32 *prompt,
								 int n_prompt, int max_new, const int32 *stop_ids, int n_stop);

/* The next token into *token; false (and no token) once finished. */
extern bool generator_next(Generator *g, int32 *token);

/* True when no token follows: max_new reached or a stop id generated. */
extern bool generator_finished(const Generator *g);

extern void generator_free(Generator *g);

/* Error 22023 naming the first stop id outside the vocabulary. */
extern void check_stop_ids(const char *who, const Gpt2Model *m, const int32 *ids, int n);

#endif							/* PG_LLM_GENERATE_GENERATE_H */
