/*
 * cpu.c -- which SIMD instruction set the kernels use.
 *
 * The extension is compiled for baseline x86-64; the fast kernels are
 * compiled per ISA with __attribute__((target(...))) and picked at run time
 * from what the CPU reports, so one binary runs on any x86-64 machine.
 */
#include "kernels.h"

static int	forced = -1;

static llm_isa
detect(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f"))
		return LLM_ISA_AVX512;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return LLM_ISA_AVX2;
#endif
	return LLM_ISA_SCALAR;
}

llm_isa
llm_cpu_isa(void)
{
	static int	detected = -1;

	if (detected < 0)
		detected = (int) detect();
	if (forced >= 0 && forced < detected)
		return (llm_isa) forced;
	return (llm_isa) detected;
}

void
llm_set_isa(llm_isa isa)
{
	forced = (int) isa;
}

const char *
llm_isa_name(llm_isa isa)
{
	switch (isa)
	{
		case LLM_ISA_AVX512:
			return "avx512";
		case LLM_ISA_AVX2:
			return "avx2";
		default:
			return "scalar";
	}
}
