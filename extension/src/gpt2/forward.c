/*
 * forward.c -- the GPT-2 forward pass, exactly as HuggingFace's
 * GPT2LMHeadModel computes it in eval mode (no dropout), over B sequences
 * of T tokens as N = B*T rows:
 *
 *   x = wte[token] + wpe[position]
 *   for each block:
 *       mid = x + c_proj(attention(c_attn(ln_1(x))))     c_attn: W [C, 3C] (Conv1D)
 *       x   = mid + c_proj(gelu_tanh(c_fc(ln_2(mid))))
 *   logits = ln_f(x) @ wte^T                             (lm_head is tied to wte)
 *
 * In a bf16 model (gpt2/model.h) the matrices and embeddings are read as
 * bf16 and widened: fp32 arithmetic over the rounded weights.
 *
 * attention: causal self-attention of q, k, v over n_head heads,
 * softmax(q k^T / sqrt(C / n_head)) v.
 *
 * One function runs it (gpt2_transformer); its callers choose what it
 * keeps (see forward.h): generation a KV cache over scratch buffers,
 * training an activation store for the backward and the tape.
 *
 * bf16 mixed precision (training with dtype 'bf16', forward.h): every
 * matmul reads the weights rounded to bf16 and rounds its input and its
 * output to bf16, as torch.autocast('cpu', dtype=torch.bfloat16) runs
 * nn.Linear / Conv1D; LayerNorm, GELU, attention, the residual stream
 * and the loss stay fp32 over those values.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/memutils.h"

#include "support/support.h"
#include "kernels/kernels.h"
#include "gpt2/forward.h"

/* ---- the activations ------------------------------------------------------ */

Gpt2Activations *
gpt2_activations_store(const Gpt2Model *m, int64 N)
{
	const Gpt2Config *cfg = &m->cfg;
	int64		C = cfg->n_embd,
				F = cfg->n_inner;
	const char *what = "activations";
	Gpt2Activations *acts = palloc0(sizeof(Gpt2Activations));

	acts->encoded = llm_alloc_floats(N, C, what);
	acts->layers = palloc0(sizeof(Gpt2LayerActs) * cfg->n_layer);
	for (int l = 0; l < cfg->n_layer; l++)
	{
		Gpt2LayerActs *a = &acts->layers[l];

		a->ln1 = llm_alloc_floats(N, C, what);
		a->ln1_mean = llm_alloc_floats(N, 1, what);
		a->ln1_rstd = llm_alloc_floats(N, 1, what);
		a->qkv = llm_alloc_floats(N, 3 * C, what);
		a->atty = llm_alloc_floats(N, C, what);
		a->att_lse = llm_alloc_floats(N, cfg->n_head, what);
		a->res_mid = llm_alloc_floats(N, C, what);
		a->ln2 = llm_alloc_floats(N, C, what);
		a->ln2_mean = llm_alloc_floats(N, 1, what);
		a->ln2_rstd = llm_alloc_floats(N, 1, what);
		a->fc = llm_alloc_floats(N, F, what);
		a->fc_gelu = llm_alloc_floats(N, F, what);
		a->res_out = llm_alloc_floats(N, C, what);
	}
	acts->lnf = llm_alloc_floats(N, C, what);
	acts->lnf_mean = llm_alloc_floats(N, 1, what);
	acts->lnf_rstd = llm_alloc_floats(N, 1, what);
	return acts;
}

/*
 * Six buffers for all layers: the residual stream x (every block's input
 * and output), mid, a LayerNorm output (ln_1, ln_2, then ln_f), qkv, the
 * attention output, and the MLP's hidden layer (GELU runs in place).
 */
Gpt2Activations *
gpt2_activations_scratch(const Gpt2Model *m, int64 N)
{
	int64		C = m->cfg.n_embd;
	const char *what = "activations";
	Gpt2Activations *acts = palloc0(sizeof(Gpt2Activations));
	Gpt2LayerActs shared = {0};

	acts->encoded = llm_alloc_floats(N, C, what);
	acts->lnf = llm_alloc_floats(N, C, what);
	shared.ln1 = shared.ln2 = acts->lnf;
	shared.qkv = llm_alloc_floats(N, 3 * C, what);
	shared.atty = llm_alloc_floats(N, C, what);
	shared.res_mid = llm_alloc_floats(N, C, what);
	shared.fc = shared.fc_gelu = llm_alloc_floats(N, m->cfg.n_inner, what);
	shared.res_out = acts->encoded;
	acts->layers = palloc(sizeof(Gpt2LayerActs) * m->cfg.n_layer);
	for (int l = 0; l < m->cfg.n_layer; l++)
		acts->layers[l] = shared;
	return acts;
}

const float *
gpt2_block_input(const Gpt2Activations *acts, int layer)
{
	return layer == 0 ? acts->encoded : acts->layers[layer - 1].res_out;
}

/* ---- the forward ----------------------------------------------------------- */

void
gpt2_round_if_bf16(bool bf16, float *x, int64 n)
{
	if (bf16)
		llm_round_bf16_array(x, x, n);
}

/* x[b, t] = wte[tokens[b, t]] + wpe[pos0 + t] */
static void
embed(const Gpt2Model *m, float *x, const int32 *tokens, int64 B, int64 T, int64 pos0)
{
	int64		C = m->cfg.n_embd;

	if (m->wte16)
	{
		/* a bf16 model: the same sums, of the floats the bf16 values stand for */
		for (int64 r = 0; r < B * T; r++)
		{
			const llm_bf16 *te = m->wte16 + (int64) tokens[r] * C;
			const llm_bf16 *pe = m->wpe16 + (pos0 + r % T) * C;

			for (int64 i = 0; i < C; i++)
				x[r * C + i] = llm_bf16_to_float(te[i]) + llm_bf16_to_float(pe[i]);
		}
		return;
	}
	llm_embedding(m->wte, tokens, x, B * T, C);
	for (int64 b = 0; b < B; b++)
		llm_add(x + b * T * C, m->wpe + pos0 * C, x + b * T * C, T * C, T * C);
}

/*
 * atty = causal attention of the q, k, v in qkv, [N, 3C]: row t holds
 * q_t, k_t, v_t side by side, read in place (row stride 3C).  With a KV
 * cache (B = 1), k_t and v_t are first appended to it at position pos0 + t
 * and every query attends over the cache's pos0 + T positions (row stride C).
 */
static void
attention(const Gpt2Model *m, const Gpt2LayerActs *a, int64 B, int64 T, int64 pos0,
		  float *k_cache, float *v_cache)
{
	int64		C = m->cfg.n_embd,
				n_head = m->cfg.n_head;

	if (k_cache != NULL)
	{
		for (int64 t = 0; t < T; t++)
		{
			const float *row = a->qkv + t * 3 * C;

			memcpy(k_cache + (pos0 + t) * C, row + C, C * sizeof(float));
			memcpy(v_cache + (pos0 + t) * C, row + 2 * C, C * sizeof(float));
		}
		llm_check_status(llm_attention(a->qkv, 3 * C, k_cache, C, v_cache, C, a->atty,
									   T, pos0 + T, C, n_head, 1, NULL));
		return;
	}
	for (int64 b = 0; b < B; b++)
	{
		const float *qkv = a->qkv + b * T * 3 * C;

		llm_check_status(llm_attention(qkv, 3 * C, qkv + C, 3 * C, qkv + 2 * C, 3 * C,
									   a->atty + b * T * C, T, T, C, n_head, 1,
									   a->att_lse ? a->att_lse + b * n_head * T : NULL));
	}
}

/*
 * y[N, out] = x[N, in] @ W (+ b): W is w, or w16 in a bf16 model (the
 * other is NULL); wte as the lm_head is stored [out, in] (transW).
 */
static void
linear(const float *x, const float *w, const llm_bf16 *w16, const float *b, float *y,
	   int64 N, int64 in, int64 out, int transW)
{
	if (w16)
		llm_check_status(llm_matmul_bf16(x, w16, b, y, N, in, out, transW));
	else
		llm_check_status(llm_matmul(x, w, b, y, N, in, out, 0, transW));
}

/*
 * One transformer block over N = B*T rows, input x (see the file's header).
 * The matmuls read their weights and biases from W: L's own (fp32, or bf16
 * for inference), or in bf16 training their bf16-rounded copies (then every
 * matmul's input and output are rounded too: activations that a matmul
 * reads are stored rounded).
 */
static void
block_forward(const Gpt2Model *m, const Gpt2Layer *L, const Gpt2Layer *W, bool bf16,
			  const Gpt2LayerActs *a, const float *x,
			  int64 B, int64 T, int64 pos0, float *k_cache, float *v_cache)
{
	int64		C = m->cfg.n_embd,
				F = m->cfg.n_inner,
				N = B * T;
	float		eps = m->cfg.layer_norm_eps;

	llm_check_status(llm_layernorm(x, L->ln1_w, L->ln1_b, a->ln1, N, C, eps,
								   a->ln1_mean, a->ln1_rstd));
	gpt2_round_if_bf16(bf16, a->ln1, N * C);
	linear(a->ln1, W->attn_w, W->attn_w16, W->attn_b, a->qkv, N, C, 3 * C, 0);
	gpt2_round_if_bf16(bf16, a->qkv, N * 3 * C);
	attention(m, a, B, T, pos0, k_cache, v_cache);
	gpt2_round_if_bf16(bf16, a->atty, N * C);
	linear(a->atty, W->attn_proj_w, W->attn_proj_w16, W->attn_proj_b, a->res_mid, N, C, C, 0);
	gpt2_round_if_bf16(bf16, a->res_mid, N * C);
	llm_add(a->res_mid, x, a->res_mid, N * C, N * C);

	llm_check_status(llm_layernorm(a->res_mid, L->ln2_w, L->ln2_b, a->ln2, N, C, eps,
								   a->ln2_mean, a->ln2_rstd));
	gpt2_round_if_bf16(bf16, a->ln2, N * C);
	linear(a->ln2, W->fc_w, W->fc_w16, W->fc_b, a->fc, N, C, F, 0);
	gpt2_round_if_bf16(bf16, a->fc, N * F);
	llm_check_status(llm_gelu(a->fc, a->fc_gelu, N * F));
	gpt2_round_if_bf16(bf16, a->fc_gelu, N * F);
	linear(a->fc_gelu, W->mlp_proj_w, W->mlp_proj_w16, W->mlp_proj_b, a->res_out, N, F, C, 0);
	gpt2_round_if_bf16(bf16, a->res_out, N * C);
	llm_add(a->res_out, a->res_mid, a->res_out, N * C, N * C);
}

/* gpt2_transformer, its matmuls reading mm's weights rounded to bf16 unless mm is NULL */
static void
transformer(const Gpt2Model *m, const Gpt2Model *mm, const Gpt2Activations *acts,
			const int32 *tokens, int64 B, int64 T, int64 pos0, const Gpt2KVCache *kv)
{
	int			n_layer = m->cfg.n_layer;

	embed(m, acts->encoded, tokens, B, T, pos0);
	for (int l = 0; l < n_layer; l++)
	{
		CHECK_FOR_INTERRUPTS();
		block_forward(m, &m->layers[l], mm ? &mm->layers[l] : &m->layers[l], mm != NULL,
					  &acts->layers[l], gpt2_block_input(acts, l), B, T, pos0,
					  kv ? kv->k[l] : NULL, kv ? kv->v[l] : NULL);
	}
	llm_check_status(llm_layernorm(gpt2_block_input(acts, n_layer), m->lnf_w, m->lnf_b,
								   acts->lnf, B * T, m->cfg.n_embd, m->cfg.layer_norm_eps,
								   acts->lnf_mean, acts->lnf_rstd));
	gpt2_round_if_bf16(mm != NULL, acts->lnf, B * T * m->cfg.n_embd);
}

void
gpt2_transformer(const Gpt2Model *m, const Gpt2Activations *acts, const int32 *tokens,
				 int64 B, int64 T, int64 pos0, const Gpt2KVCache *kv)
{
	transformer(m, NULL, acts, tokens, B, T, pos0, kv);
}

void
gpt2_lm_head(const Gpt2Model *m, const float *lnf, int64 nrows, float *out)
{
	/* wte is stored [V, C], hence transposed */
	linear(lnf, m->wte, m->wte16, NULL, out, nrows, m->cfg.n_embd, m->cfg.vocab_size, 1);
}

/* ---- generation: the KV-cached state --------------------------------------- */

Gpt2State *
gpt2_state_new(const Gpt2Model *m, int64 max_rows, int64 n_ctx)
{
	int64		C = m->cfg.n_embd;
	MemoryContext mcxt = AllocSetContextCreate(CurrentMemoryContext, "pg_llm gpt2 state",
											   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	Gpt2State  *st = palloc0(sizeof(Gpt2State));

	if (max_rows < 1 || n_ctx < max_rows || n_ctx > m->cfg.n_positions)
		elog(ERROR, "gpt2_state_new: bad sizes max_rows " INT64_FORMAT ", n_ctx " INT64_FORMAT,
			 max_rows, n_ctx);
	st->mcxt = mcxt;
	st->model = m;
	st->max_rows = max_rows;
	st->n_ctx = n_ctx;

	/*
	 * Allocated once per call; the decode loop allocates nothing.  A single
	 * forward over all positions (n_ctx == max_rows: llm_logits, llm_loss)
	 * needs no KV cache: attention reads k and v from the qkv buffer.
	 */
	if (n_ctx > max_rows)
	{
		st->kv = palloc(sizeof(Gpt2KVCache));
		st->kv->k = palloc(sizeof(float *) * m->cfg.n_layer);
		st->kv->v = palloc(sizeof(float *) * m->cfg.n_layer);
		for (int l = 0; l < m->cfg.n_layer; l++)
		{
			st->kv->k[l] = llm_alloc_floats(n_ctx, C, "the KV cache");
			st->kv->v[l] = llm_alloc_floats(n_ctx, C, "the KV cache");
		}
	}
	st->acts = gpt2_activations_scratch(m, max_rows);
	MemoryContextSwitchTo(old);
	return st;
}

/* The time spent, at DEBUG1 (SET client_min_messages = debug1 to see it). */
void
gpt2_state_free(Gpt2State *st)
{
	elog(DEBUG1, "pg_llm gpt2 \"%s\": %.2f ms over " INT64_FORMAT " positions; "
		 "transformer %.2f, lm_head %.2f (ms)",
		 st->model->name, (st->forward_seconds + st->lm_head_seconds) * 1000.0, st->n_past,
		 st->forward_seconds * 1000.0, st->lm_head_seconds * 1000.0);
	MemoryContextDelete(st->mcxt);
}

/* Seconds since `start`. */
static double
seconds_since(instr_time start)
{
	instr_time	now;

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	return INSTR_TIME_GET_DOUBLE(now);
}

void
gpt2_forward(Gpt2State *st, const int32 *tokens, int64 T)
{
	instr_time	start;

	/* Callers check these against the model; this is a last line of defence. */
	if (T < 1 || T > st->max_rows || st->n_past + T > st->n_ctx ||
		(st->kv == NULL && st->n_past > 0))
		elog(ERROR, "gpt2_forward: " INT64_FORMAT " tokens after " INT64_FORMAT
			 " do not fit (max_rows " INT64_FORMAT ", n_ctx " INT64_FORMAT ")",
			 T, st->n_past, st->max_rows, st->n_ctx);
	INSTR_TIME_SET_CURRENT(start);
	gpt2_transformer(st->model, st->acts, tokens, 1, T, st->n_past, st->kv);
	st->forward_seconds += seconds_since(start);
	st->n_past += T;
	st->last_rows = T;
}

void
gpt2_logits(Gpt2State *st, int64 row, int64 nrows, float *out)
{
	instr_time	start;

	if (row < 0 || nrows < 1 || row + nrows > st->last_rows)
		elog(ERROR, "gpt2_logits: rows " INT64_FORMAT " .. " INT64_FORMAT " are not in the last forward",
			 row, row + nrows - 1);
	INSTR_TIME_SET_CURRENT(start);
	gpt2_lm_head(st->model, st->acts->lnf + row * st->model->cfg.n_embd, nrows, out);
	st->lm_head_seconds += seconds_since(start);
}

void
gpt2_state_copy_cache(Gpt2State *dst, const Gpt2State *src)
{
	const Gpt2Model *m = src->model;
	Size		bytes = src->n_past * m->cfg.n_embd * sizeof(float);

	if (dst == src)
		return;
	if (src->kv == NULL || dst->kv == NULL || dst->n_ctx != src->n_ctx)
		elog(ERROR, "gpt2_state_copy_cache: states of different shapes");
	for (int l = 0; l < m->cfg.n_layer; l++)
	{
		memcpy(dst->kv->k[l], src->kv->k[l], bytes);
		memcpy(dst->kv->v[l], src->kv->v[l], bytes);
	}
	dst->n_past = src->n_past;
	dst->last_rows = 0;
}

/* ---- training: the activation store ---------------------------------------- */

Gpt2Batch *
gpt2_batch_new(const Gpt2Model *m, int64 B, int64 T)
{
	int64		N = B * T;
	MemoryContext mcxt = AllocSetContextCreate(CurrentMemoryContext, "pg_llm gpt2 batch",
											   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	Gpt2Batch  *b = palloc0(sizeof(Gpt2Batch));

	if (B < 1 || T < 1 || T > m->cfg.n_positions)
		elog(ERROR, "gpt2_batch_new: bad batch " INT64_FORMAT " x " INT64_FORMAT, B, T);
	b->mcxt = mcxt;
	b->model = m;
	b->B = B;
	b->T = T;
	b->N = N;
	b->tokens = palloc(sizeof(int32) * N);
	b->targets = palloc(sizeof(int32) * N);
	b->acts = gpt2_activations_store(m, N);
	b->dlnf = llm_alloc_floats(N, m->cfg.n_embd, "training gradients");
	MemoryContextSwitchTo(old);
	return b;
}

void
gpt2_batch_free(Gpt2Batch *b)
{
	MemoryContextDelete(b->mcxt);
}

double
gpt2_batch_forward(Gpt2Batch *b, const int32 *tokens, const int32 *targets,
				   const Gpt2Model *grads)
{
	const Gpt2Model *m = b->model;
	int64		C = m->cfg.n_embd;
	double		loss;
	int64		counted;

	memcpy(b->tokens, tokens, sizeof(int32) * b->N);
	memcpy(b->targets, targets, sizeof(int32) * b->N);
	transformer(m, b->bf16, b->acts, b->tokens, b->B, b->T, 0, NULL);
	if (grads)
		memset(b->dlnf, 0, sizeof(float) * b->N * C);

	/*
	 * The training lm_head: logits = lnf @ wte^T (tied), fused with the loss.
	 * bf16: it reads the rounded wte and rounds the logits and their
	 * gradient (HF's loss upcasts the logits); the dlnf and wte gradients it
	 * adds are rounded once all are added (both were zero before).
	 */
	llm_check_status(llm_linear_cross_entropy(b->acts->lnf, (b->bf16 ? b->bf16 : m)->wte,
											  b->targets, b->N, C, m->cfg.vocab_size,
											  b->bf16 != NULL, &loss, &counted,
											  grads ? b->dlnf : NULL,
											  grads ? grads->wte : NULL));
	if (grads)
	{
		gpt2_round_if_bf16(b->bf16 != NULL, b->dlnf, b->N * C);
		gpt2_round_if_bf16(b->bf16 != NULL, grads->wte, (int64) m->cfg.vocab_size * C);
	}
	if (counted == 0)
		elog(ERROR, "gpt2_batch_forward: every target is -100");
	b->counted = counted;
	return loss;
}
