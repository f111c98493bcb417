/*
 * prng.h -- a small, fast, seedable random number generator.
 *
 * pg_llm needs random numbers that are *reproducible*: the same seed must
 * give the same weights (llm_randn) and the same sampled tokens
 * (llm_generate_tokens) on every machine, at any thread count.  PostgreSQL's
 * own random() is global to the backend and its sequence is an
 * implementation detail, so we carry our own generator:
 *
 *   xoshiro256** (Blackman & Vigna, 2018) -- 256 bits of state, passes
 *   BigCrush, four shifts/rotations and two multiplies per number.
 *
 * A 64-bit seed is stretched into the 256-bit state with splitmix64, which
 * also scrambles nearby seeds (1, 2, 3, ...) into unrelated states.
 *
 * Everything is static inline: no state is shared between callers.
 */
#ifndef PG_LLM_PRNG_H
#define PG_LLM_PRNG_H

#include <math.h>
#include <stdint.h>

typedef struct LlmRng
{
	uint64_t	s[4];
} LlmRng;

/* splitmix64: one step of a 64-bit counter through a strong mixer. */
static inline uint64_t
llm_splitmix64(uint64_t *x)
{
	uint64_t	z = (*x += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static inline void
llm_rng_seed(LlmRng *rng, uint64_t seed)
{
	uint64_t	x = seed;

	for (int i = 0; i < 4; i++)
		rng->s[i] = llm_splitmix64(&x);
	/* splitmix64 never yields four zero words in a row, but be explicit. */
	if ((rng->s[0] | rng->s[1] | rng->s[2] | rng->s[3]) == 0)
		rng->s[0] = 1;
}

static inline uint64_t
llm_rotl64(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* The next 64 random bits (xoshiro256**). */
static inline uint64_t
llm_rng_next(LlmRng *rng)
{
	uint64_t   *s = rng->s;
	uint64_t	result = llm_rotl64(s[1] * 5, 7) * 9;
	uint64_t	t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = llm_rotl64(s[3], 45);
	return result;
}

/* Uniform double in [0, 1): the top 53 bits, scaled by 2^-53. */
static inline double
llm_rng_uniform(LlmRng *rng)
{
	return (double) (llm_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
}

/*
 * Two independent standard normal samples (Box-Muller):
 *   r = sqrt(-2 ln u1),  z0 = r cos(2 pi u2),  z1 = r sin(2 pi u2)
 * with u1 in (0, 1] so that the logarithm is finite.
 */
static inline void
llm_rng_normal_pair(LlmRng *rng, double *z0, double *z1)
{
	double		u1 = 1.0 - llm_rng_uniform(rng);
	double		u2 = llm_rng_uniform(rng);
	double		r = sqrt(-2.0 * log(u1));
	double		theta = 2.0 * M_PI * u2;

	*z0 = r * cos(theta);
	*z1 = r * sin(theta);
}

#endif							/* PG_LLM_PRNG_H */
