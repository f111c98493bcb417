/*
 * text_generation.h -- generation from a text prompt to text
 * (text_generation.c): a Generator (generate.h) whose tokens are decoded as
 * they come, handing out only complete UTF-8 characters and never a piece
 * of a stop string.
 *
 *   TextGen *t = textgen_from_args(fcinfo, "llm_generate");
 *   while (textgen_next(t, &token, &from, &to))
 *       ... t->text.data[from .. to) is the text this token adds ...
 *   textgen_free(t);
 *
 * The SQL arguments, in this order, are those of llm_generate and
 * llm_generate_stream: prompt, max_tokens, temperature, top_k, top_p,
 * model, seed, stop, stop_ids, repetition_penalty.
 */
#ifndef PG_LLM_GENERATE_TEXT_GENERATION_H
#define PG_LLM_GENERATE_TEXT_GENERATION_H

#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"

#include "generate/generate.h"
#include "tokenizer/tokenizer.h"

typedef struct TextGen
{
	const char *who;
	Generator  *gen;
	const LlmTokenizer *tok;
	char	   *tok_name;
	int64		tok_version;
	LlmBpeStream detok;
	StringInfoData text;		/* UTF-8 written so far */
	int			released;		/* bytes of text handed out */
	char	  **stops;			/* stop strings, UTF-8 */
	int			n_stops;
	int			longest_stop;
	int			end;			/* -1, or where the first stop string starts */
} TextGen;

/* Read and check the arguments, encode the prompt; no forward yet. */
extern TextGen *textgen_from_args(FunctionCallInfo fcinfo, const char *who);

/*
 * One more token into *token; the text it adds is t->text.data[*from ..
 * *to) (maybe empty).  False, with no token, once finished.
 */
extern bool textgen_next(TextGen *t, int32 *token, int *from, int *to);

/* True when no token follows. */
extern bool textgen_finished(const TextGen *t);

/* Re-attach to the tokenizer cache across calls (same version, else error 55000). */
extern void textgen_resume(TextGen *t);

extern void textgen_free(TextGen *t);

#endif							/* PG_LLM_GENERATE_TEXT_GENERATION_H */
