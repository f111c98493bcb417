/*
 * utf8.h -- UTF-8 checks and lossy decoding, as HuggingFace and Python do it.
 *
 * Token bytes need not be valid UTF-8: a character can span tokens, and a
 * model can emit any sequence.  Text made from them replaces each invalid
 * stretch with U+FFFD the way Rust's String::from_utf8_lossy (HF tokenizers'
 * ByteLevel decoder) and Python's bytes.decode(errors="replace") do: one
 * U+FFFD per "maximal subpart" (Unicode, chapter 3, "U+FFFD Substitution of
 * Maximal Subparts").  PostgreSQL's text cannot hold NUL, so a NUL byte
 * becomes U+FFFD too.
 */
#ifndef PG_LLM_UTF8_H
#define PG_LLM_UTF8_H

#include "postgres.h"

#include "lib/stringinfo.h"

#define LLM_REPLACEMENT_CHAR 0xFFFD

/*
 * The UTF-8 sequence at s (len >= 1): returns its length in bytes and sets
 * *ok if it is one valid character.  If it is not, the length is that of
 * its maximal subpart (at least 1 byte), and *truncated tells whether the
 * input ended inside a sequence that more bytes could still complete.
 */
extern size_t llm_utf8_sequence(const unsigned char *s, size_t len, bool *ok,
								bool *truncated);

/*
 * Append s to buf as valid UTF-8 without NUL, each maximal invalid subpart
 * and each NUL replaced by U+FFFD.  With final = false, a truncated
 * sequence at the very end is left out (more bytes may complete it).
 * Returns the number of bytes of s consumed.
 */
extern size_t llm_utf8_append_lossy(StringInfo buf, const unsigned char *s,
									size_t len, bool final);

/* The offset of the first byte of s that is not valid UTF-8, or -1. */
extern int64 llm_utf8_invalid_at(const unsigned char *s, size_t len);

/* Append code point cp (a valid scalar value) encoded as UTF-8. */
extern void llm_utf8_append_char(StringInfo buf, uint32 cp);

#endif							/* PG_LLM_UTF8_H */
