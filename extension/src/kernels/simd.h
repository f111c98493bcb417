/*
 * simd.h -- what the x86 kernel variants share: the target attributes that
 * compile one function for AVX2+FMA or AVX-512 inside a baseline x86-64
 * build (cpu.c picks the variant at run time), and two small helpers.
 */
#ifndef PG_LLM_SIMD_H
#define PG_LLM_SIMD_H

#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define LLM_X86 1
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#define TARGET_AVX512 __attribute__((target("avx512f")))

/* Sum of the 8 lanes of v. */
TARGET_AVX2 static inline float
hsum_avx2(__m256 v)
{
	__m128		s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/* AVX-512 mask of the first n of 16 lanes (n <= 0: none, n >= 16: all). */
static inline __mmask16
mask16(int64_t n)
{
	return n >= 16 ? (__mmask16) 0xFFFF : n <= 0 ? (__mmask16) 0 :
		(__mmask16) ((1u << n) - 1);
}
#endif

#endif							/* PG_LLM_SIMD_H */
