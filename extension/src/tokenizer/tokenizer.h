/*
 * tokenizer.h -- GPT-2's byte-level BPE tokenizer, for C callers.
 *
 * A tokenizer is the rows of one model in llm_bpe_vocab and llm_bpe_merges.
 * llm_tokenizer_get() reads them once and keeps them in backend memory,
 * keyed by llm_tokenizer.version, which every write to the two tables bumps
 * (statement triggers, sql/60_tokenizer.sql): as for the GPT-2 weight cache, a
 * call that sees the cached version may use the cache.
 *
 *     const LlmTokenizer *tok = llm_tokenizer_get("gpt2");
 *     int         n;
 *     int32      *ids = llm_bpe_encode(tok, utf8, len, false, &n);
 *     StringInfoData out;
 *
 *     initStringInfo(&out);
 *     llm_bpe_decode_text(tok, ids, n, &out);     -- UTF-8, U+FFFD where invalid
 *
 * Token by token (text generation), emitting only complete characters:
 *
 *     LlmBpeStream s;
 *     llm_bpe_stream_init(&s, tok);
 *     for (...) { llm_bpe_stream_push(&s, id, &out); send out.data; resetStringInfo(&out); }
 *     llm_bpe_stream_finish(&s, &out);            -- a cut-off character becomes U+FFFD
 *
 * Text is UTF-8 here (the SQL functions convert from and to the database
 * encoding).  Ids from outside are checked with llm_bpe_check_ids() or by
 * the decoders, which raise ERROR 22023 for an id outside the vocabulary.
 */
#ifndef PG_LLM_TOKENIZER_H
#define PG_LLM_TOKENIZER_H

#include "postgres.h"

#include "lib/stringinfo.h"

typedef struct LlmTokenizer LlmTokenizer;

/*
 * The tokenizer of `model`, from the cache when its version is unchanged;
 * ERROR 42704 if there is none.  The pointer stays valid until the next
 * llm_tokenizer_get() or llm_tokenizer_cache_clear() call.
 */
extern const LlmTokenizer *llm_tokenizer_get(const char *model);
extern void llm_tokenizer_cache_clear(void);

extern const char *llm_tokenizer_model(const LlmTokenizer *tok);
extern int	llm_tokenizer_vocab_size(const LlmTokenizer *tok);
extern int	llm_tokenizer_merges(const LlmTokenizer *tok);
/* The id of <|endoftext|>, or -1 if the vocabulary has none. */
extern int32 llm_tokenizer_eot_id(const LlmTokenizer *tok);
/* The special tokens: those no merge makes (GPT-2: <|endoftext|> alone). */
extern const int32 *llm_tokenizer_special_ids(const LlmTokenizer *tok, int *n);
/* llm_tokenizer.version of the rows it was read from. */
extern int64 llm_tokenizer_version(const LlmTokenizer *tok);

/*
 * The ids of `len` bytes of UTF-8 text, palloc'd, *n_ids of them.  With
 * allow_special, special tokens written in the text (<|endoftext|>) are
 * their own ids; without, they are plain text like any other.
 */
extern int32 *llm_bpe_encode(const LlmTokenizer *tok, const char *utf8, size_t len,
							 bool allow_special, int *n_ids);

/* ERROR 22023 (naming `who`) unless every id is in the vocabulary. */
extern void llm_bpe_check_ids(const LlmTokenizer *tok, const char *who,
							  const int32 *ids, int n);

/* The bytes token `id` stands for (a valid id), *len of them. */
extern const unsigned char *llm_bpe_token_bytes(const LlmTokenizer *tok, int32 id,
												int *len);

/* Append the bytes of the tokens, as they are (maybe not valid UTF-8). */
extern void llm_bpe_decode_bytes(const LlmTokenizer *tok, const int32 *ids, int n,
								 StringInfo out);

/* Append the text of the tokens: valid UTF-8, U+FFFD for invalid bytes and NUL. */
extern void llm_bpe_decode_text(const LlmTokenizer *tok, const int32 *ids, int n,
								StringInfo out);

/* Decoding token by token; see the example above. */
typedef struct LlmBpeStream
{
	const LlmTokenizer *tok;
	unsigned char pending[4];	/* the start of a character cut off by a token */
	int			n_pending;
} LlmBpeStream;

extern void llm_bpe_stream_init(LlmBpeStream *s, const LlmTokenizer *tok);
/* Append to out the complete characters that token `id` finishes. */
extern void llm_bpe_stream_push(LlmBpeStream *s, int32 id, StringInfo out);
/* Append what is left: an unfinished character becomes U+FFFD. */
extern void llm_bpe_stream_finish(LlmBpeStream *s, StringInfo out);

#endif							/* PG_LLM_TOKENIZER_H */
