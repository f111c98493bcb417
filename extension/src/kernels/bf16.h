/*
 * bf16.h -- bfloat16, the number format of mixed precision: the top 16 bits
 * of an IEEE float32 (sign, the same 8-bit exponent, 7 bits of mantissa).
 * A float rounds to it with round-to-nearest-even on the 16 bits dropped,
 * as torch's .to(torch.bfloat16) does; a bf16 widens back to float exactly
 * (a shift).  So "fp32 arithmetic over bf16-rounded values" is a precise
 * meaning: round each input once, then compute in float.
 *
 * One definition of each conversion: kernels that store or read bf16
 * include this header.
 */
#ifndef PG_LLM_BF16_H
#define PG_LLM_BF16_H

#include <stdint.h>
#include <string.h>

typedef uint16_t llm_bf16;

/*
 * f rounded to the nearest bf16, ties to even.  A NaN stays a NaN (quiet,
 * its sign kept); a finite value above the largest bf16 rounds to infinity,
 * as IEEE rounding says.
 */
static inline llm_bf16
llm_float_to_bf16(float f)
{
	uint32_t	u;

	memcpy(&u, &f, sizeof u);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (llm_bf16) ((u >> 16) | 0x0040u);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (llm_bf16) (u >> 16);
}

/* the float a bf16 stands for (exact) */
static inline float
llm_bf16_to_float(llm_bf16 h)
{
	uint32_t	u = (uint32_t) h << 16;
	float		f;

	memcpy(&f, &u, sizeof f);
	return f;
}

/* f rounded to bf16 precision, as a float */
static inline float
llm_round_bf16(float f)
{
	return llm_bf16_to_float(llm_float_to_bf16(f));
}

#endif							/* PG_LLM_BF16_H */
