/*
 * hash.h -- the hash functions of the tokenizer's tables (open addressing,
 * power-of-two sizes; the top bits of a hash pick the slot).
 */
#ifndef PG_LLM_TOKENIZER_HASH_H
#define PG_LLM_TOKENIZER_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A 64-bit mix (splitmix64's finaliser): every input bit moves every output bit. */
static inline uint64_t
llm_hash_u64(uint64_t x)
{
	x ^= x >> 30;
	x *= UINT64_C(0xbf58476d1ce4e5b9);
	x ^= x >> 27;
	x *= UINT64_C(0x94d049bb133111eb);
	x ^= x >> 31;
	return x;
}

/* A hash of n bytes, eight at a time. */
static inline uint64_t
llm_hash_bytes(const void *data, size_t n)
{
	const unsigned char *p = (const unsigned char *) data;
	uint64_t	h = UINT64_C(0x9e3779b97f4a7c15) ^ (n * UINT64_C(0xff51afd7ed558ccd));

	while (n >= 8)
	{
		uint64_t	w;

		memcpy(&w, p, 8);
		h = llm_hash_u64(h ^ w);
		p += 8;
		n -= 8;
	}
	if (n > 0)
	{
		uint64_t	w = 0;

		memcpy(&w, p, n);
		h = llm_hash_u64(h ^ w ^ ((uint64_t) n << 56));
	}
	return h;
}

/* The key of a pair of token ids. */
static inline uint64_t
llm_pair_key(int32_t left, int32_t right)
{
	return (uint64_t) (uint32_t) left << 32 | (uint32_t) right;
}

#endif							/* PG_LLM_TOKENIZER_HASH_H */
