/*
 * kernels.h -- the math of pg_llm, in plain C99.
 *
 * Nothing here includes a PostgreSQL header: every function works on plain
 * float arrays, never allocates with palloc and never reports errors through
 * ereport.  The PostgreSQL glue in src/ checks shapes and sizes *before*
 * calling in, so kernels may assume valid arguments.
 *
 * Conventions
 *   - tensors are float32, contiguous, row-major;
 *   - sizes are int64_t;
 *   - functions that may run for long return LLM_OK, or LLM_INTERRUPTED when
 *     the interrupt hook (see llm_parallel_for) asked them to stop; their
 *     output is then incomplete and must be discarded by the caller.
 *   - results never depend on the number of threads: work is split over
 *     output elements, never over a reduction.
 *
 * Backward (llm_<op>_backward, next to each forward), as llm.c:
 *   - every backward ACCUMULATES into each gradient it writes (dx += ...):
 *     a gradient that several uses of a tensor feed is summed in place, and
 *     a caller that wants the gradient alone zeroes the buffer first;
 *   - any gradient pointer may be NULL: that gradient is not wanted and its
 *     work is skipped;
 *   - a sum over rows (a bias gradient, LayerNorm's dg and db, embedding
 *     rows, attention's dk and dv over queries) is split over the summed
 *     tensor's own elements, each summed in a fixed order, never across
 *     tasks: bit-identical at any thread count, no atomics;
 *   - the backward reads what the forward computed or handed back (y of
 *     softmax, mean/rstd of LayerNorm, logsumexp of cross-entropy and
 *     attention) rather than recomputing it.
 */
#ifndef PG_LLM_KERNELS_H
#define PG_LLM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "bf16.h"

#define LLM_OK 0
#define LLM_INTERRUPTED 1
#define LLM_NOMEM 2				/* scratch memory could not be allocated */

/* ---- worker pool (pool.c) --------------------------------------------- */

/* A task processes items [begin, end) of some range. */
typedef void (*llm_task_fn) (void *ctx, int64_t begin, int64_t end);

/* Number of threads (>= 1) used by llm_parallel_for; the caller included. */
void		llm_pool_set_threads(int nthreads);
int			llm_pool_threads(void);
int			llm_cpu_count(void);

/*
 * Hook polled by the calling thread between tasks.  When it returns non-zero
 * the remaining tasks are skipped and llm_parallel_for returns
 * LLM_INTERRUPTED.  The PostgreSQL glue points it at a function that reads
 * QueryCancelPending/ProcDiePending; workers never call it.
 */
extern int	(*llm_interrupt_hook) (void);

/*
 * Run fn over [0, n) in tasks of `grain` items (the last may be shorter).
 * Task boundaries depend only on n and grain, never on the thread count,
 * so any task-local reduction order is fixed: results are bit-identical at
 * any pool size.  Runs inline when there is a single task.
 */
int			llm_parallel_for(int64_t n, int64_t grain, llm_task_fn fn, void *ctx);

/* ---- SIMD dispatch (cpu.c, dispatch.h) --------------------------------- */

typedef enum
{
	LLM_ISA_SCALAR = 0,
	LLM_ISA_AVX2 = 1,			/* AVX2 + FMA */
	LLM_ISA_AVX512 = 2,			/* AVX-512F */
	LLM_ISA_NEON = 3			/* ARM Advanced SIMD (aarch64) */
} llm_isa;

llm_isa		llm_cpu_isa(void);	/* the ISA the kernels use now */
const char *llm_isa_name(llm_isa isa);

/*
 * Use `isa` from now on: an ISA the CPU lacks (above its best, or of the
 * other architecture: x86's on aarch64, NEON on x86) gives the CPU's best,
 * so -1 means "the best there is"; lower ones are for tests.
 * Runs once when the library is loaded, with the CPU's best.  Not to be
 * called while a kernel runs.
 */
void		llm_set_isa(llm_isa isa);

/* ---- matmul (matmul/) ---------------------------------------------------- */

/*
 * C[M,N] = op(A) @ op(B)  (+ bias[N] broadcast over rows when bias != NULL)
 *   op(A) is [M,K]: A is stored [M,K], or [K,M] when transA;
 *   op(B) is [K,N]: B is stored [K,N], or [N,K] when transB.
 * GPT-2's Conv1D is the plain case (W stored [in,out]); the tied lm_head is
 * transB (wte stored [vocab, n_embd]).
 */
int			llm_matmul(const float *A, const float *B, const float *bias, float *C,
					   int64_t M, int64_t K, int64_t N, int transA, int transB);

/*
 * llm_matmul with B stored as bfloat16 (bf16.h) and A not transposed: C is
 * fp32 arithmetic over the floats B's values stand for, bit-identical at
 * any thread count; as llm_matmul computes it over those floats (bit for
 * bit on every ISA) -- except the AVX2 and AVX-512 transB GEMVs (M == 1),
 * which sum each row in their own lane order, to widen 16 bf16 per load.
 * Inference with pg_llm.inference_dtype = 'bf16' reads its weights so.
 */
int			llm_matmul_bf16(const float *A, const llm_bf16 *B, const float *bias, float *C,
							int64_t M, int64_t K, int64_t N, int transB);

/*
 * C[M,N] += op(A) @ op(B), same shapes and storage as llm_matmul: the GEMM
 * adds into C as it goes (no extra pass, no temporary).  Each element is
 * C + (its k-blocks' FMA chains, in increasing k).
 */
int			llm_matmul_acc(const float *A, const float *B, float *C,
						   int64_t M, int64_t K, int64_t N, int transA, int transB);

/*
 * C[m] = A[m] @ op(B) (+ bias) for M rows A[m] [K] and C[m] [N] anywhere in
 * memory: C[m] is bit-identical to llm_matmul of A[m] alone (M = 1),
 * whatever M and the number of threads -- the batch-invariant product of
 * decode batching (matmul/gemv_rows.c).  One pass over B serves all rows.
 */
int			llm_matmul_rows(const float *const *A, const float *B, const float *bias,
							float *const *C, int64_t M, int64_t K, int64_t N, int transB);

/*
 * Backward of C = op(A) @ op(B) (+ bias) given dC [M,N]; every gradient is
 * laid out as its operand is stored and accumulated:
 *   dA += dC @ op(B)^T   ([M,K], or [K,M] when transA)
 *   dB += op(A)^T @ dC   ([K,N], or [N,K] when transB)
 *   dbias[N] += the column sums of dC
 * Each of dA, dB, dbias may be NULL.  dA and dB are one llm_matmul_acc
 * each (the tied lm_head's dwte is M = vocab, transA: dlogits^T @ x).
 */
int			llm_matmul_backward(const float *dC, const float *A, const float *B,
								float *dA, float *dB, float *dbias,
								int64_t M, int64_t K, int64_t N, int transA, int transB);

/* ---- elementwise maps (elementwise.c) ------------------------------------ */

/* y = a + b, where b has n or (row broadcast) `bn` elements, n % bn == 0 */
void		llm_add(const float *a, const float *b, float *y, int64_t n, int64_t bn);
/* y = a * b elementwise, same broadcasting rule as llm_add */
void		llm_mul(const float *a, const float *b, float *y, int64_t n, int64_t bn);
/* y = s * x */
void		llm_scale(const float *x, float s, float *y, int64_t n);
/* y[j,i] = x[i,j] for x [rows, cols] */
void		llm_transpose(const float *x, float *y, int64_t rows, int64_t cols);
/*
 * y = x rounded to bf16 precision, as floats (y may be x): each element as
 * bf16.h's llm_round_bf16, round-to-nearest-even.  bf16 mixed-precision
 * training rounds its matmuls' operands and results with it.
 */
void		llm_round_bf16_array(const float *x, float *y, int64_t n);

/*
 * Their backward, on the calling thread, given dy (n elements):
 *   add:  da += dy;  db += dy, summed over the n / bn rows when bn < n
 *   mul:  da += dy * b;  db += dy * a (summed over rows likewise)
 *   scale: dx += s * dy
 *   transpose: dx [rows, cols] += dy^T, dy being the forward's y [cols, rows]
 * da, db may be NULL.
 */
void		llm_add_backward(const float *dy, float *da, float *db, int64_t n, int64_t bn);
void		llm_mul_backward(const float *dy, const float *a, const float *b,
							 float *da, float *db, int64_t n, int64_t bn);
void		llm_scale_backward(const float *dy, float s, float *dx, int64_t n);
void		llm_transpose_backward(const float *dy, float *dx, int64_t rows, int64_t cols);

/* ---- GELU (gelu.c) ------------------------------------------------------- */

/* GELU, tanh approximation (GPT-2's "gelu_new") */
int			llm_gelu(const float *x, float *y, int64_t n);

/* dx += dy * gelu'(x): PyTorch's gelu(approximate='tanh') gradient */
int			llm_gelu_backward(const float *x, const float *dy, float *dx, int64_t n);

/* ---- softmax (softmax.c) ------------------------------------------------- */

/*
 * Softmax over the last axis of x [rows, cols].  With causal_rows = Tq > 0,
 * x is read as blocks of Tq query rows over cols = Tk keys: row r (query
 * i = r % Tq) keeps columns j <= i + (Tk - Tq) and the others get 0.
 * causal_rows = 0 means no mask.
 */
int			llm_softmax(const float *x, float *y, int64_t rows, int64_t cols,
						int64_t causal_rows);

/*
 * Backward of llm_softmax from its output y: per row,
 * dx += y * (dy - sum(y * dy)) over the columns the forward kept (same
 * causal_rows rule; masked columns of dx are left as they are).
 */
int			llm_softmax_backward(const float *y, const float *dy, float *dx,
								 int64_t rows, int64_t cols, int64_t causal_rows);

/* ---- LayerNorm (layernorm.c) --------------------------------------------- */

/*
 * LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * g + b.
 * When mean and rstd are not NULL they receive, per row ([rows] each), the
 * mean and rstd = 1/sqrt(var + eps) used -- what the backward needs.
 */
int			llm_layernorm(const float *x, const float *g, const float *b, float *y,
						  int64_t rows, int64_t cols, float eps,
						  float *mean, float *rstd);

/*
 * Backward of llm_layernorm, given the forward's x, g and its per-row mean
 * and rstd: with xhat = (x - mean) * rstd and dn = g * dy,
 *   dx += (dn - mean(dn) - xhat * mean(dn * xhat)) * rstd     (per row)
 *   dg[cols] += sum over rows of xhat * dy;  db[cols] += sum over rows of dy
 * dx, dg, db may each be NULL.
 */
int			llm_layernorm_backward(const float *x, const float *g, const float *mean,
								   const float *rstd, const float *dy, float *dx,
								   float *dg, float *db, int64_t rows, int64_t cols);

/* ---- embedding (embedding.c) --------------------------------------------- */

/* y[t,:] = w[ids[t],:] for w [vocab, dim]; ids already range-checked */
void		llm_embedding(const float *w, const int32_t *ids, float *y,
						  int64_t n_ids, int64_t dim);

/* dw[ids[t],:] += dy[t,:], ids in order (they may repeat); calling thread */
void		llm_embedding_backward(const int32_t *ids, const float *dy, float *dw,
								   int64_t n_ids, int64_t dim);

/* ---- cross-entropy (cross_entropy.c) ------------------------------------- */

/*
 * Mean cross-entropy of logits [rows, vocab] against targets[rows]
 * (already range-checked; a target < 0 is ignored, as PyTorch's -100).
 * Writes the mean over counted rows to *loss; returns LLM_OK or
 * LLM_INTERRUPTED.  *counted receives how many rows counted.  When lse is
 * not NULL, lse[r] receives log(sum(exp(logits[r,:]))) for every row r,
 * ignored rows included (the backward's softmax is exp(logits - lse)).
 */
int			llm_cross_entropy(const float *logits, const int32_t *targets,
							  int64_t rows, int64_t vocab, double *loss, int64_t *counted,
							  float *lse);

/*
 * Backward: for every counted row r (targets[r] >= 0),
 *   dlogits[r,:] += scale * (softmax(logits[r,:]) - onehot(targets[r]))
 * with softmax = exp(logits - lse[r]); ignored rows get nothing.  For the
 * mean loss the caller passes scale = dL/dloss / counted.  lse is the
 * forward's (NULL: computed here, one more pass over the logits).
 */
int			llm_cross_entropy_backward(const float *logits, const int32_t *targets,
									   const float *lse, int64_t rows, int64_t vocab,
									   float scale, float *dlogits);

/*
 * The lm_head and the cross-entropy fused, for training: logits = x @ w^T
 * (x [rows, dim], w [vocab, dim], as GPT-2's tied wte), their mean
 * cross-entropy against targets into *loss and *counted as
 * llm_cross_entropy, and when dx / dw are not NULL the gradient of that
 * mean loss ADDED into dx [rows, dim] and dw [vocab, dim].  The logits are
 * made one chunk of rows at a time (at most 32 MB of them), never all at
 * once.  bf16 (mixed-precision training): the logits and, before the two
 * products that make dx and dw, their gradient are rounded to bf16, as
 * torch.autocast's bf16 lm_head; x and w are the caller's to round, and
 * dx and dw its to round once all is added.  Returns LLM_OK,
 * LLM_INTERRUPTED or LLM_NOMEM (nothing counted: *loss is NaN and nothing
 * is added).
 */
int			llm_linear_cross_entropy(const float *x, const float *w, const int32_t *targets,
									 int64_t rows, int64_t dim, int64_t vocab, int bf16,
									 double *loss, int64_t *counted, float *dx, float *dw);

/* ---- attention (attention/) ---------------------------------------------- */

/*
 * Multi-head scaled dot-product attention, y = softmax(q k^T / sqrt(hd)) v
 * per head.  q is [Tq, C], k and v are [Tk, C], y is [Tq, C] contiguous,
 * C = n_head * hd; head h uses columns h*hd .. (h+1)*hd - 1.  Rows are read
 * with a stride (row t of q starts at q + t*ldq, likewise k and v) so the
 * fused [T, 3C] output of GPT-2's c_attn is used in place.
 * Query row i sits at absolute position (Tk - Tq) + i: a KV-cached decode
 * step passes Tq = 1.  When causal, query i attends keys 0 .. (Tk - Tq) + i.
 * When lse is not NULL, lse[h * Tq + i] ([n_head, Tq]) receives the
 * logsumexp of query i's scaled, masked scores in head h (-inf for a query
 * that sees no key), so a backward can recompute the probabilities as
 * exp(score - lse).
 * Work is split over (head, chunk of query rows); scratch is O(chunk * Tk)
 * per task, plus packed copies of k and v (2 * Tk * C floats) for prefill.
 * Returns LLM_NOMEM if that memory cannot be had.
 */
int			llm_attention(const float *q, int64_t ldq,
						  const float *k, int64_t ldk,
						  const float *v, int64_t ldv,
						  float *y, int64_t Tq, int64_t Tk, int64_t C,
						  int64_t n_head, int causal, float *lse);

/*
 * Backward of llm_attention (attention/backward.c), given its inputs, its
 * output y [Tq, C], its lse [n_head, Tq] and dy [Tq, C]:
 *   dq [Tq, C] += dL/dq,  dk [Tk, C] += dL/dk,  dv [Tk, C] += dL/dv
 * Every gradient is strided like the inputs (row t of dq starts at
 * dq + t*ldq_grad, ...), so for GPT-2's fused qkv [T, 3C] the gradient
 * buffer dqkv [T, 3C] is passed as dq = dqkv, dk = dqkv + C, dv = dqkv + 2C,
 * all with stride 3C.  Same mask and Tk - Tq offset as the forward; a
 * query that saw no key (lse -inf) gets nothing.  Each of dq, dk, dv may
 * be NULL.  The probabilities are recomputed from lse (flash-attention
 * style): scratch is O((Tq + Tk) * hd) per head, never Tq x Tk.  One task
 * per head.  Returns LLM_NOMEM if scratch cannot be had.
 */
int			llm_attention_backward(const float *q, int64_t ldq,
								   const float *k, int64_t ldk,
								   const float *v, int64_t ldv,
								   const float *y, const float *lse, const float *dy,
								   float *dq, int64_t ldq_grad,
								   float *dk, int64_t ldk_grad,
								   float *dv, int64_t ldv_grad,
								   int64_t Tq, int64_t Tk, int64_t C, int64_t n_head,
								   int causal);

#endif							/* PG_LLM_KERNELS_H */
