/*
 * byte_level.h -- GPT-2's byte-level alphabet: 256 printable characters,
 * one for each byte (bytes_to_unicode() in openai/gpt-2's encoder.py).
 *
 * BPE works on bytes, but vocab.json and merges.txt are text, so every
 * byte is written as a character: the printable bytes '!'..'~', '¡'..'¬' and
 * '®'..'ÿ' as themselves, the other 68 (control characters, space, NBSP,
 * soft hyphen) as U+0100..U+0143 in byte order.  A space is 'Ġ' (U+0120),
 * a newline 'Ċ' (U+010A): " the" is the token "Ġthe".
 *
 * The alphabet order -- the printable bytes ascending, then the others
 * ascending, which is also the characters' code point order -- gives the
 * 256 byte tokens their ids 0..255, in GPT-2's vocab.json as in a
 * HuggingFace ByteLevel BpeTrainer's vocabulary.
 */
#ifndef PG_LLM_BYTE_LEVEL_H
#define PG_LLM_BYTE_LEVEL_H

#include "postgres.h"

#include "lib/stringinfo.h"

/* The character standing for byte b. */
extern uint32 llm_byte_char(unsigned char b);

/* The byte that code point cp stands for, or -1 if cp is not in the alphabet. */
extern int	llm_char_byte(uint32 cp);

/* The byte whose token has id `rank` (0..255) in the alphabet order, and back. */
extern unsigned char llm_alphabet_byte(int rank);
extern int	llm_byte_rank(unsigned char b);

/*
 * Append the bytes token text `token` (UTF-8, len bytes) stands for: one
 * byte per alphabet character; a character outside the alphabet (only in
 * added tokens) stands for its own UTF-8 bytes.  Returns false if the token
 * has a character outside the alphabet.
 */
extern bool llm_token_bytes(StringInfo out, const char *token, int len);

/* Append the token text of `len` bytes: one alphabet character per byte. */
extern void llm_bytes_token(StringInfo out, const unsigned char *bytes, int len);

#endif							/* PG_LLM_BYTE_LEVEL_H */
