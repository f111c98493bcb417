/*
 * pretokenize.h -- GPT-2's pre-tokenizer: text into the pieces that BPE
 * then encodes one by one.
 *
 * The pieces are the matches of GPT-2's pattern, found left to right:
 *
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *
 * PostgreSQL's regex engine has no \p{...}, so the pattern is matched by
 * hand here, with the character classes of unicode_tables.h (letters,
 * numbers, White_Space; generated from Python's unicodedata).  The pieces
 * cover the text exactly: every byte belongs to one piece.
 *
 * Plain C, no PostgreSQL header: the input is UTF-8; a byte that does not
 * start a valid UTF-8 character counts as one "other" character.
 */
#ifndef PG_LLM_PRETOKENIZE_H
#define PG_LLM_PRETOKENIZE_H

#include <stddef.h>
#include <stdint.h>

typedef enum LlmCharClass
{
	LLM_CHAR_OTHER = 0,			/* [^\s\p{L}\p{N}] */
	LLM_CHAR_LETTER,			/* \p{L} */
	LLM_CHAR_NUMBER,			/* \p{N} */
	LLM_CHAR_SPACE				/* \s: White_Space */
} LlmCharClass;

/* The class of code point cp. */
extern LlmCharClass llm_char_class(uint32_t cp);

/*
 * The length in bytes of the piece that starts at s (len > 0 bytes left):
 * the next match of GPT-2's pattern.  Always at least 1.
 */
extern size_t llm_gpt2_piece_len(const unsigned char *s, size_t len);

#endif							/* PG_LLM_PRETOKENIZE_H */
