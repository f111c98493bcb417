/*
 * prompt.h -- what the text-level generation functions share (prompt.c):
 * a text prompt to token ids that fit the model, the default stop ids, and
 * text between the database encoding and the tokenizer's UTF-8.
 *
 *   int32 *ids = prompt_ids(who, tok, m, PG_GETARG_TEXT_PP(0), max_tokens, &n);
 *   int32 *stop = stop_ids_or_eot(fcinfo, argno, who, tok, m, &n_stop);
 */
#ifndef PG_LLM_GENERATE_PROMPT_H
#define PG_LLM_GENERATE_PROMPT_H

#include "postgres.h"

#include "fmgr.h"

#include "gpt2/model_cache.h"
#include "tokenizer/tokenizer.h"

/*
 * The ids of a text prompt, as llm_encode gives them: <|endoftext|> written
 * in it is plain text, so a prompt cannot smuggle in a control token.  An
 * empty prompt starts from <|endoftext|>, as GPT-2's unconditional samples do.  A prompt that
 * leaves fewer than max_tokens positions of the context is cut from the
 * left, with a NOTICE; max_tokens >= n_positions is an error.
 */
extern int32 *prompt_ids(const char *who, const LlmTokenizer *tok, const Gpt2Model *m,
						 text *prompt, int max_tokens, int *n);

/* The stop ids argument at argno; NULL means <|endoftext|> (if the tokenizer has it). */
extern int32 *stop_ids_or_eot(FunctionCallInfo fcinfo, int argno, const char *who,
							  const LlmTokenizer *tok, const Gpt2Model *m, int *n);

/*
 * Error 22023 if the tokenizer has no text for a token id the model wrote
 * (a model's vocabulary may be padded beyond its tokenizer's).
 */
extern void check_decodable(const char *who, const LlmTokenizer *tok, const Gpt2Model *m,
							int32 id);

/* A text value (database encoding) as NUL-terminated UTF-8. */
extern char *text_to_utf8(text *t, int *len);

/* UTF-8 bytes as a text value in the database encoding. */
extern text *utf8_to_text(const char *utf8, int len);

#endif							/* PG_LLM_GENERATE_PROMPT_H */
