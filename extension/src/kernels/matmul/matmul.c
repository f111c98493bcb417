/*
 * matmul.c -- C[M,N] = op(A) @ op(B) (+ bias), the hot loop of pg_llm:
 * the entry point, and the design of the files in matmul/.
 *
 * Three paths, chosen from the shape:
 *
 *   1. GEMV (M == 1, or N == 1 by transposing the problem).  Decoding one
 *      token is memory-bound: each weight is read once and used for one
 *      FMA, so the only goal is to stream B at full bandwidth (gemv.c).
 *
 *   2. GEMM (M > 1), the classic GotoBLAS/BLIS design (gemm.c, and the
 *      micro-kernels in microkernel_avx512.c, microkernel_avx2.c and
 *      microkernel_neon.c):
 *
 *        pack all of A (and, when several row tiles share it, all of B)
 *        for each output tile [m0,m1) x [n0,n1)          <- parallel tasks
 *          for each block of kc values of k               <- in order
 *            pack B[k-block, n0:n1] into NR-wide panels (unless prepacked)
 *            for each MR-row panel of A
 *              for each NR-wide panel of B
 *                micro-kernel: C[MR,NR] (+)= Apanel[MR,kc] @ Bpanel[kc,NR]
 *
 *      The micro-kernel keeps an MR x NR block of C in registers (AVX-512:
 *      14 x 32 = 28 zmm accumulators; AVX2: 6 x 16 = 12 ymm; NEON: 8 x 12
 *      = 24 q registers).  Each k step
 *      loads one row of the B panel (NR floats) and broadcasts MR values
 *      of the A panel: 2*MR FMAs for MR+2 loads, all from L1.  Packing
 *      copies both operands into exactly the order the micro-kernel reads
 *      them, whatever their storage -- which is why transA/transB cost
 *      nothing in the inner loop: the transposes happen while packing.
 *      The A panel (MR x kc, 14-21 KB) stays in L1, the packed B block
 *      (kc x tile width, <= 768 KB) in L2.  When A is too big to pack up
 *      front, each tile packs its A block (tile height x kc) per k-block
 *      too, into L2.  While the kernels run, the sources of the next
 *      blocks a tile packs are prefetched into L2, so packing does not
 *      wait on memory.
 *
 *      Edges: panels are zero padded to MR rows / NR columns; there is one
 *      kernel per row count 1..MR (no FMAs wasted on short row panels) and
 *      partial column panels are stored with masks.
 *
 *   B may also be stored as bf16 (llm_matmul_bf16, inference with
 *   pg_llm.inference_dtype = 'bf16'): see gemv_bf16.c and pack_b_block.
 *   Every SIMD ISA (AVX2, AVX-512, NEON) widens the bf16 values to the
 *   floats they stand for and runs its fp32 arithmetic over them; the bf16
 *   dot-product instructions (vdpbf16ps, NEON's BFDOT/BFMMLA) are not used:
 *   they round differently.
 *
 *   3. Scalar reference (reference.c): plain loops, used on builds that are
 *      neither x86-64 nor aarch64 and when llm_set_isa(LLM_ISA_SCALAR)
 *      forces it.
 *
 * Which of them runs is the matmul family's table (dispatch.h), filled by
 * llm_set_isa: the scalar one runs the reference, the AVX2, AVX-512 and
 * NEON ones route by shape (matmul_simd below) to their GEMV task or GEMM plug-in.
 *
 * Determinism.  Every element of C is: for each k-block in increasing k,
 * an FMA chain over the block, added into C; then + bias.  k-blocks and
 * tiles are functions of (M, K, N) only, and tasks are whole tiles, so the
 * bits never depend on the number of threads.  (GEMV goes one step
 * further, see gemv.c: its split cannot affect the bits at all.)
 *
 * Memory.  Packing buffers are per thread (__thread pointers to malloc'd
 * memory, grown on demand and kept for the life of the thread, so repeated
 * calls do not page-fault new memory).  Whole-matrix packed copies live in
 * the calling thread's buffers up to PACK_KEEP bytes each; a bigger
 * matrix is packed block by block by the tiles instead.  When an
 * allocation fails nothing crashes: GEMM falls back to packing one
 * micro-panel at a time into a stack buffer (slower; same arithmetic, same
 * bits -- tested).
 *
 * llm_matmul must not be called from inside an llm_parallel_for task (the
 * pool is not reentrant).
 */
#include "matmul_internal.h"

const matmul_kernels matmul_scalar_kernels = {matmul_scalar, NULL, NULL, NULL};

#if LLM_X86
const matmul_kernels matmul_avx2_kernels = {matmul_simd, &gemm_avx2, gemv256_task,
gemv256_bf16_task};
const matmul_kernels matmul_avx512_kernels = {matmul_simd, &gemm_avx512, gemv512_task,
gemv512_bf16_task};
#endif
#if LLM_NEON
const matmul_kernels matmul_neon_kernels = {matmul_simd, &gemm_neon, gemv_neon_task,
gemv_neon_bf16_task};
#endif

#if LLM_X86 || LLM_NEON

/* The fast paths: GEMV when one side is a vector, GEMM otherwise. */
int
matmul_simd(mm_ctx *c)
{
	if (c->M == 1)
	{
		/* a [1,K] row is the same memory whether stored [1,K] or [K,1] */
		c->transA = 0;
		return matmul_gemv(c);
	}
	if (c->N == 1 && c->B16 == NULL)
	{
		/*
		 * C[M,1] = op(A) @ b is C^T[1,M] = b^T @ op(A)^T: a GEMV whose
		 * matrix is A, "transposed" exactly when A is stored [M,K].  The
		 * bias (one value) is added afterwards, as everywhere: chain + bias.
		 */
		const float *bias = c->bias;
		const float *A = c->A;
		int64_t		i;
		int			rc;

		c->A = c->B;
		c->B = A;
		c->N = c->M;
		c->M = 1;
		c->transB = !c->transA;
		c->transA = 0;
		c->bias = NULL;
		rc = matmul_gemv(c);
		if (rc == LLM_OK && bias)
			for (i = 0; i < c->N; i++)
				c->C[i] += bias[0];
		return rc;
	}
	c->isa = c->kernels->gemm;
	return matmul_gemm(c);
}

#endif							/* LLM_X86 || LLM_NEON */

static int
matmul_run(const float *A, const float *B, const float *bias, float *C,
		   int64_t M, int64_t K, int64_t N, int transA, int transB,
		   int accumulate)
{
	mm_ctx		c = {
		.A = A, .B = B, .bias = bias, .C = C, .M = M, .K = K, .N = N,
		.transA = transA != 0, .transB = transB != 0,
		.accumulate = accumulate, .kernels = llm_kernels->matmul,
	};

	return c.kernels->run(&c);
}

int
llm_matmul(const float *A, const float *B, const float *bias, float *C,
		   int64_t M, int64_t K, int64_t N, int transA, int transB)
{
	return matmul_run(A, B, bias, C, M, K, N, transA, transB, 0);
}

/*
 * bf16 weights (B16): GEMV reads them as they are (gemv_bf16.c); GEMM
 * packs them as bf16 panels that the AVX2 and AVX-512 micro-kernels widen
 * in registers, or (a transposed B, NEON) widens them while packing
 * (gemm.c).  Either way C is fp32 arithmetic over the widened B.
 */
int
llm_matmul_bf16(const float *A, const llm_bf16 *B, const float *bias, float *C,
				int64_t M, int64_t K, int64_t N, int transB)
{
	mm_ctx		c = {
		.A = A, .B16 = B, .bias = bias, .C = C, .M = M, .K = K, .N = N,
		.transB = transB != 0, .kernels = llm_kernels->matmul,
	};

	return c.kernels->run(&c);
}

int
llm_matmul_acc(const float *A, const float *B, float *C,
			   int64_t M, int64_t K, int64_t N, int transA, int transB)
{
	if (M <= 0 || K <= 0 || N <= 0)
		return LLM_OK;			/* nothing to add */
	return matmul_run(A, B, NULL, C, M, K, N, transA, transB, 1);
}

/*
 * The backward of C = op(A) op(B) (+ bias), each gradient one accumulating
 * product laid out as its operand is stored:
 *   dA [M,K] += dC op(B)^T         (A stored [M,K])
 *   dA [K,M] += op(B) dC^T         (transA: A stored [K,M])
 *   dB [K,N] += op(A)^T dC         (B stored [K,N])
 *   dB [N,K] += dC^T op(A)         (transB: B stored [N,K])
 *   dbias [N] += the column sums of dC
 */
int
llm_matmul_backward(const float *dC, const float *A, const float *B,
					float *dA, float *dB, float *dbias,
					int64_t M, int64_t K, int64_t N, int transA, int transB)
{
	int			status = LLM_OK;

	if (dA && status == LLM_OK)
		status = transA
			? llm_matmul_acc(B, dC, dA, K, N, M, transB, 1)
			: llm_matmul_acc(dC, B, dA, M, N, K, 0, !transB);
	if (dB && status == LLM_OK)
		status = transB
			? llm_matmul_acc(dC, A, dB, N, M, K, 1, transA)
			: llm_matmul_acc(A, dC, dB, K, M, N, !transA, 0);
	if (dbias && status == LLM_OK)
		llm_add_backward(dC, NULL, dbias, M * N, N);
	return status;
}
