/*
 * cpu.c -- which SIMD instruction set the kernels use.
 *
 * On x86-64 the extension is compiled for the baseline; the fast kernels
 * are compiled per ISA with __attribute__((target(...))) and picked at run
 * time from what the CPU reports, so one binary runs on any x86-64 machine.
 * On aarch64 the fast kernels are NEON (Advanced SIMD), which every
 * ARMv8-A core has: nothing to detect.  Elsewhere only the scalar kernels
 * exist.
 * llm_set_isa() is the one place that picks them: it points llm_kernels
 * (dispatch.h) at the tables of the ISA in use, when the library is loaded
 * and whenever it is called again (pg_llm.simd's assign hook).
 */
#include "kernels.h"

#include "dispatch.h"
#include "simd.h"

#define SCALAR(family) .family = &family##_scalar_kernels,
#define AVX2(family) .family = &family##_avx2_kernels,
#define AVX512(family) .family = &family##_avx512_kernels,
#define NEON(family) .family = &family##_neon_kernels,
static const llm_kernel_tables tables[] = {
	[LLM_ISA_SCALAR] = {.isa = LLM_ISA_SCALAR, LLM_KERNEL_FAMILIES(SCALAR)},
#if LLM_X86
	[LLM_ISA_AVX2] = {.isa = LLM_ISA_AVX2, LLM_KERNEL_FAMILIES(AVX2)},
	[LLM_ISA_AVX512] = {.isa = LLM_ISA_AVX512, LLM_KERNEL_FAMILIES(AVX512)},
#endif
#if LLM_NEON
	[LLM_ISA_NEON] = {.isa = LLM_ISA_NEON, LLM_KERNEL_FAMILIES(NEON)},
#endif
};
#define NTABLES ((int) (sizeof(tables) / sizeof(tables[0])))

const llm_kernel_tables *llm_kernels = &tables[LLM_ISA_SCALAR];

/* best ISA of this CPU: both variants compiled, and the CPU runs them */
static llm_isa
detect(void)
{
#if LLM_X86
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f"))
		return LLM_ISA_AVX512;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return LLM_ISA_AVX2;
#endif
#if LLM_NEON
	return LLM_ISA_NEON;
#endif
	return LLM_ISA_SCALAR;
}

static llm_isa
best_isa(void)
{
	static int	detected = -1;

	if (detected < 0)
		detected = (int) detect();
	return (llm_isa) detected;
}

llm_isa
llm_cpu_isa(void)
{
	return llm_kernels->isa;
}

/*
 * isa, or the best when the CPU lacks it or it is of another architecture
 * (an x86 ISA on aarch64: its row is empty).
 */
void
llm_set_isa(llm_isa isa)
{
	llm_isa		best = best_isa();

	if ((int) isa < 0 || isa > best || (int) isa >= NTABLES || tables[isa].matmul == NULL)
		isa = best;
	llm_kernels = &tables[isa];
}

/* At load: the best the CPU has (PostgreSQL's GUC then confirms or lowers it). */
__attribute__((constructor)) static void
choose_at_load(void)
{
	llm_set_isa(best_isa());
}

const char *
llm_isa_name(llm_isa isa)
{
	switch (isa)
	{
		case LLM_ISA_NEON:
			return "neon";
		case LLM_ISA_AVX512:
			return "avx512";
		case LLM_ISA_AVX2:
			return "avx2";
		default:
			return "scalar";
	}
}
