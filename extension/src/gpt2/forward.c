/*
 * forward.c -- the GPT-2 forward pass, exactly as HuggingFace's
 * GPT2LMHeadModel computes it in eval mode (no dropout):
 *
 *   x = wte[token] + wpe[position]
 *   for each layer:
 *       h   = LayerNorm_1(x)
 *       qkv = h @ W_attn + b_attn          W_attn is [C, 3C] (Conv1D)
 *       a   = causal self-attention of q, k, v, n_head heads,
 *             softmax(q k^T / sqrt(C / n_head)) v
 *       x   = x + a @ W_proj + b_proj
 *       h   = LayerNorm_2(x)
 *       x   = x + gelu_tanh(h @ W_fc + b_fc) @ W_proj2 + b_proj2
 *   logits = LayerNorm_f(x) @ wte^T        (lm_head is tied to wte)
 *
 * Keys and values of every position go to a KV cache, so that decoding the
 * next token runs the network over that one token only, its query attending
 * to all the cached keys.  The weights come from model_cache.c.
 *
 * Also the SQL functions llm_logits() and llm_loss().
 *
 * When st->record (llm_loss and llm_logits with pg_llm.autograd_mode on),
 * every step also goes on the autograd tape as the SQL op it is: a Conv1D
 * layer is an llm_matmul and an llm_add of the bias (run apart then, so
 * that the tape holds the product before the bias), attention is
 * llm_attention_qkv over the fused [T, 3C] buffer, the weights are leaves
 * named as in llm_param.  Off, each step pays one test of st->record.
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "autograd/tape.h"
#include "kernels/kernels.h"
#include "gpt2/forward.h"
#include "tensor/tensor.h"

/* ---- the per-call state: KV cache and scratch --------------------------- */

Gpt2State *
gpt2_state_new(const Gpt2Model *m, int64 max_rows, int64 n_ctx)
{
	int64		C = m->cfg.n_embd,
				F = m->cfg.n_inner;
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
		st->k_cache = palloc(sizeof(float *) * m->cfg.n_layer);
		st->v_cache = palloc(sizeof(float *) * m->cfg.n_layer);
		for (int l = 0; l < m->cfg.n_layer; l++)
		{
			st->k_cache[l] = llm_alloc_floats(n_ctx, C, "the KV cache");
			st->v_cache[l] = llm_alloc_floats(n_ctx, C, "the KV cache");
		}
	}
	st->x = llm_alloc_floats(max_rows, C, "activations");
	st->hidden = llm_alloc_floats(max_rows, C, "activations");
	st->qkv = llm_alloc_floats(max_rows, 3 * C, "activations");
	st->att = llm_alloc_floats(max_rows, C, "activations");
	st->proj = llm_alloc_floats(max_rows, C, "activations");
	st->fc = llm_alloc_floats(max_rows, F, "activations");
	MemoryContextSwitchTo(old);
	return st;
}

/* Report the timers (SET client_min_messages = debug1 to see them). */
static void
report_timers(const Gpt2State *st)
{
	static const char *const names[TIMER_COUNT] = {
		"embed", "layernorm", "qkv", "attention", "attn_proj",
		"mlp_fc", "gelu", "mlp_proj", "residual", "lm_head"
	};
	StringInfoData s;
	double		total = 0;

	if (!message_level_is_interesting(DEBUG1))
		return;
	initStringInfo(&s);
	for (int i = 0; i < TIMER_COUNT; i++)
	{
		appendStringInfo(&s, " %s %.2f", names[i], st->seconds[i] * 1000.0);
		total += st->seconds[i];
	}
	elog(DEBUG1, "pg_llm gpt2 \"%s\": %.2f ms over " INT64_FORMAT " positions;%s (ms)",
		 st->model->name, total * 1000.0, st->n_past, s.data);
	pfree(s.data);
}

void
gpt2_state_free(Gpt2State *st)
{
	report_timers(st);
	MemoryContextDelete(st->mcxt);
}

/* ---- the forward pass ---------------------------------------------------- */

static instr_time
timer_start(void)
{
	instr_time	t;

	INSTR_TIME_SET_CURRENT(t);
	return t;
}

static void
timer_stop(Gpt2State *st, Gpt2Timer which, instr_time start)
{
	instr_time	now;

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	st->seconds[which] += INSTR_TIME_GET_DOUBLE(now);
}

/* ---- the tape (only when st->record) ------------------------------------- */

/*
 * A weight as a leaf of the tape, named as its llm_param row; cols 0: 1-D.
 * With st->leaves (gpt2_record_batch), the sequences of a batch share one
 * leaf per weight, so that llm_backprop() sums its gradient over the batch.
 */
static int32
param_leaf(Gpt2State *st, const float *w, int64 rows, int64 cols, const char *name)
{
	int64		dims[2] = {rows, cols};
	Gpt2Leaves *shared = st->leaves;
	int32		id;

	if (shared)
		for (int i = 0; i < list_length(shared->names); i++)
			if (strcmp(list_nth(shared->names, i), name) == 0)
				return list_nth_int(shared->ids, i);
	id = tape_leaf(w, cols ? 2 : 1, dims, name, false);
	if (shared)
	{
		shared->names = lappend(shared->names, pstrdup(name));
		shared->ids = lappend_int(shared->ids, id);
	}
	return id;
}

static int32
record(TapeOpKind kind, int32 a, int32 b, int32 c, const TapeAttrs *attrs,
	   const float *out, int64 rows, int64 cols)
{
	int32		inputs[3] = {a, b, c};
	int64		dims[2] = {rows, cols};

	return tape_record(kind, inputs, tape_ops[kind].arity, attrs, out, 2, dims, false);
}

/* "h.<layer>.<what>" (layer < 0: "<what>"), a parameter's name. */
static char *
param_name(int layer, const char *what)
{
	return layer < 0 ? pstrdup(what) : psprintf("h.%d.%s", layer, what);
}

/*
 * out[T, N] = in[T, K] @ w[K, N] + b[N]: a Conv1D layer (w stored [in, out])
 * named `name` in layer `layer`; returns the tape id of out (0 when not
 * recording), in_id being that of in.
 */
static int32
linear(Gpt2State *st, Gpt2Timer which, const float *in, const float *w, const float *b,
	   float *out, int64 T, int64 K, int64 N, int32 in_id, int layer, const char *name)
{
	instr_time	start = timer_start();
	int32		product;

	if (!st->record)
	{
		llm_check_status(llm_matmul(in, w, b, out, T, K, N, 0, 0));
		timer_stop(st, which, start);
		return 0;
	}
	llm_check_status(llm_matmul(in, w, NULL, out, T, K, N, 0, 0));
	product = record(TAPE_OP_MATMUL, in_id,
					 param_leaf(st, w, K, N, psprintf("%s.weight", param_name(layer, name))), 0,
					 &(TapeAttrs) {.i = {0, 0}}, out, T, N);
	llm_add(out, b, out, T * N, N);
	timer_stop(st, which, start);
	return record(TAPE_OP_ADD, product,
				  param_leaf(st, b, N, 0, psprintf("%s.bias", param_name(layer, name))), 0,
				  NULL, out, T, N);
}

/* out[T, C] = LayerNorm(in[T, C]) * g + b, over each row; as linear(). */
static int32
layernorm(Gpt2State *st, const float *in, const float *g, const float *b, float *out, int64 T,
		  int32 in_id, int layer, const char *name)
{
	int64		C = st->model->cfg.n_embd;
	instr_time	start = timer_start();

	llm_check_status(llm_layernorm(in, g, b, out, T, C,
								   st->model->cfg.layer_norm_eps, NULL, NULL));
	timer_stop(st, TIMER_LAYERNORM, start);
	if (!st->record)
		return 0;
	return record(TAPE_OP_LAYERNORM, in_id,
				  param_leaf(st, g, C, 0, psprintf("%s.weight", param_name(layer, name))),
				  param_leaf(st, b, C, 0, psprintf("%s.bias", param_name(layer, name))),
				  &(TapeAttrs) {.f = st->model->cfg.layer_norm_eps}, out, T, C);
}

/* x[T, C] += delta[T, C]: the residual connection. */
static void
residual_add(Gpt2State *st, const float *delta, int64 T, int32 delta_id)
{
	instr_time	start = timer_start();
	int64		n = T * st->model->cfg.n_embd;

	llm_add(st->x, delta, st->x, n, n);
	timer_stop(st, TIMER_RESIDUAL, start);
	if (st->record)
		st->x_id = record(TAPE_OP_ADD, st->x_id, delta_id, 0, NULL, st->x, T, st->model->cfg.n_embd);
}

/* x[t] = wte[tokens[t]] + wpe[n_past + t] */
static void
embed(Gpt2State *st, const int32 *tokens, int64 T)
{
	const Gpt2Model *m = st->model;
	int64		C = m->cfg.n_embd;
	instr_time	start = timer_start();

	int32		tokens_id = 0,
				positions_id = 0;

	llm_embedding(m->wte, tokens, st->x, T, C);
	if (st->record)
	{
		st->wte_id = param_leaf(st, m->wte, m->cfg.vocab_size, C, "wte.weight");
		tokens_id = record(TAPE_OP_EMBEDDING, st->wte_id, 0, 0,
						   &(TapeAttrs) {.ids = tokens, .n_ids = T}, st->x, T, C);
		positions_id = record(TAPE_OP_SLICE,
							  param_leaf(st, m->wpe, m->cfg.n_positions, C, "wpe.weight"), 0, 0,
							  &(TapeAttrs) {.i = {st->n_past, st->n_past + T}},
							  m->wpe + st->n_past * C, T, C);
	}
	llm_add(st->x, m->wpe + st->n_past * C, st->x, T * C, T * C);
	timer_stop(st, TIMER_EMBED, start);
	if (st->record)
		st->x_id = record(TAPE_OP_ADD, tokens_id, positions_id, 0, NULL, st->x, T, C);
}

/*
 * x += c_proj(attention(c_attn(LayerNorm_1(x))))
 *
 * The fused qkv buffer is [T, 3C]: row t holds q_t, k_t, v_t side by side.
 * The queries are read in place (row stride 3C) and attend over all
 * n_past + T positions, query t seeing keys 0 .. n_past + t.  With a KV
 * cache, k_t and v_t are first appended to this layer's cache at position
 * n_past + t and read from there (row stride C); without one (a single
 * forward over the whole sequence) they are read in place too.
 */
static void
attention_block(Gpt2State *st, int layer, int64 T)
{
	const Gpt2Model *m = st->model;
	const Gpt2Layer *L = &m->layers[layer];
	int64		C = m->cfg.n_embd;
	int64		pos0 = st->n_past;
	const float *k = st->qkv + C,
			   *v = st->qkv + 2 * C;
	int64		ldkv = 3 * C;
	instr_time	start;
	int32		id;

	id = layernorm(st, st->x, L->ln1_w, L->ln1_b, st->hidden, T, st->x_id, layer, "ln_1");
	id = linear(st, TIMER_QKV, st->hidden, L->attn_w, L->attn_b, st->qkv, T, C, 3 * C,
				id, layer, "attn.c_attn");

	start = timer_start();
	if (st->k_cache != NULL)
	{
		float	   *k_cache = st->k_cache[layer];
		float	   *v_cache = st->v_cache[layer];

		for (int64 t = 0; t < T; t++)
		{
			const float *row = st->qkv + t * 3 * C;

			memcpy(k_cache + (pos0 + t) * C, row + C, C * sizeof(float));
			memcpy(v_cache + (pos0 + t) * C, row + 2 * C, C * sizeof(float));
		}
		k = k_cache;
		v = v_cache;
		ldkv = C;
	}
	llm_check_status(llm_attention(st->qkv, 3 * C, k, ldkv, v, ldkv, st->att,
								   T, pos0 + T, C, m->cfg.n_head, 1, NULL));
	timer_stop(st, TIMER_ATTENTION, start);
	if (st->record)
		id = record(TAPE_OP_ATTENTION_QKV, id, 0, 0, &(TapeAttrs) {.i = {m->cfg.n_head, 1}},
					st->att, T, C);

	id = linear(st, TIMER_ATTN_PROJ, st->att, L->attn_proj_w, L->attn_proj_b, st->proj, T, C, C,
				id, layer, "attn.c_proj");
	residual_add(st, st->proj, T, id);
}

/* x += c_proj(gelu(c_fc(LayerNorm_2(x)))) */
static void
mlp_block(Gpt2State *st, int layer, int64 T)
{
	const Gpt2Model *m = st->model;
	const Gpt2Layer *L = &m->layers[layer];
	int64		C = m->cfg.n_embd,
				F = m->cfg.n_inner;
	instr_time	start;
	int32		id;

	id = layernorm(st, st->x, L->ln2_w, L->ln2_b, st->hidden, T, st->x_id, layer, "ln_2");
	id = linear(st, TIMER_MLP_FC, st->hidden, L->fc_w, L->fc_b, st->fc, T, C, F,
				id, layer, "mlp.c_fc");

	start = timer_start();
	llm_check_status(llm_gelu(st->fc, st->fc, T * F));	/* elementwise: in place */
	timer_stop(st, TIMER_GELU, start);
	if (st->record)
		id = record(TAPE_OP_GELU, id, 0, 0, NULL, st->fc, T, F);

	id = linear(st, TIMER_MLP_PROJ, st->fc, L->mlp_proj_w, L->mlp_proj_b, st->proj, T, F, C,
				id, layer, "mlp.c_proj");
	residual_add(st, st->proj, T, id);
}

void
gpt2_forward(Gpt2State *st, const int32 *tokens, int64 T)
{
	const Gpt2Model *m = st->model;

	/* Callers check these against the model; this is a last line of defence. */
	if (T < 1 || T > st->max_rows || st->n_past + T > st->n_ctx ||
		(st->k_cache == NULL && st->n_past > 0))
		elog(ERROR, "gpt2_forward: " INT64_FORMAT " tokens after " INT64_FORMAT
			 " do not fit (max_rows " INT64_FORMAT ", n_ctx " INT64_FORMAT ")",
			 T, st->n_past, st->max_rows, st->n_ctx);

	embed(st, tokens, T);
	for (int layer = 0; layer < m->cfg.n_layer; layer++)
	{
		CHECK_FOR_INTERRUPTS();
		attention_block(st, layer, T);
		mlp_block(st, layer, T);
	}
	st->hidden_id = layernorm(st, st->x, m->lnf_w, m->lnf_b, st->hidden, T, st->x_id, -1, "ln_f");
	st->n_past += T;
	st->last_rows = T;
}

void
gpt2_logits(Gpt2State *st, int64 row, int64 nrows, float *out)
{
	const Gpt2Model *m = st->model;
	int64		C = m->cfg.n_embd;
	instr_time	start = timer_start();

	if (row < 0 || nrows < 1 || row + nrows > st->last_rows)
		elog(ERROR, "gpt2_logits: rows " INT64_FORMAT " .. " INT64_FORMAT " are not in the last forward",
			 row, row + nrows - 1);
	/* logits = hidden @ wte^T: wte is stored [V, C], hence transB. */
	llm_check_status(llm_matmul(st->hidden + row * C, m->wte, NULL, out,
								nrows, C, m->cfg.vocab_size, 0, 1));
	timer_stop(st, TIMER_LM_HEAD, start);
}

void
gpt2_state_copy_cache(Gpt2State *dst, const Gpt2State *src)
{
	const Gpt2Model *m = src->model;
	Size		bytes = src->n_past * m->cfg.n_embd * sizeof(float);

	if (dst == src)
		return;
	if (src->k_cache == NULL || dst->k_cache == NULL || dst->n_ctx != src->n_ctx)
		elog(ERROR, "gpt2_state_copy_cache: states of different shapes");
	for (int l = 0; l < m->cfg.n_layer; l++)
	{
		memcpy(dst->k_cache[l], src->k_cache[l], bytes);
		memcpy(dst->v_cache[l], src->v_cache[l], bytes);
	}
	dst->n_past = src->n_past;
	dst->last_rows = 0;
}

/* ---- SQL: llm_logits, llm_loss ------------------------------------------- */

int32 *
gpt2_token_array(const char *who, const char *what, ArrayType *arr, int *n)
{
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: %s must be a one-dimensional int[] array, got %d dimensions",
						who, what, ARR_NDIM(arr))));
	return int_array_values(who, arr, n);
}

/* Error unless 1 <= n <= n_positions and every id is in the vocabulary. */
static void
check_sequence(const char *who, const Gpt2Model *m, const int32 *ids, int n)
{
	if (n < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: the token array is empty", who)));
	if (n > m->cfg.n_positions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: %d tokens are more than model \"%s\" takes (n_positions = %d)",
						who, n, m->name, m->cfg.n_positions)));
	gpt2_check_tokens(who, m, ids, n);
}

/*
 * llm_logits(model, tokens, last_only) -> tensor [T, V], or [1, V] with
 * last_only: the next-token logits after each prefix of `tokens`.
 */
PG_FUNCTION_INFO_V1(llm_logits_sql);
Datum
llm_logits_sql(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			T;
	int32	   *ids = gpt2_token_array("llm_logits", "tokens", PG_GETARG_ARRAYTYPE_P(1), &T);
	bool		last_only = PG_GETARG_BOOL(2);
	const Gpt2Model *m = gpt2_model_get(name);
	int64		rows = last_only ? 1 : T;
	int64		dims[2];
	Gpt2State  *st;
	Tensor	   *out;

	check_sequence("llm_logits", m, ids, T);
	dims[0] = rows;
	dims[1] = m->cfg.vocab_size;
	out = tensor_new(2, dims);

	st = gpt2_state_new(m, T, T);
	st->record = autograd_recording();
	gpt2_forward(st, ids, T);
	gpt2_logits(st, T - rows, rows, out->data);
	if (st->record)
	{
		int32		hidden = st->hidden_id;
		int32		inputs[2];

		if (last_only)
			hidden = record(TAPE_OP_SLICE, hidden, 0, 0, &(TapeAttrs) {.i = {T - 1, T}},
							st->hidden + (T - 1) * m->cfg.n_embd, 1, m->cfg.n_embd);
		inputs[0] = hidden;
		inputs[1] = st->wte_id;
		/* findable: a later llm_cross_entropy(llm_logits(...), ...) links to it */
		tape_record(TAPE_OP_MATMUL, inputs, 2, &(TapeAttrs) {.i = {0, 1}}, out->data, 2, dims, true);
	}
	gpt2_state_free(st);
	PG_RETURN_TENSOR_P(out);
}

/*
 * The mean cross-entropy of one sequence's logits against its targets (-100
 * ignored; at least one counted), *counted the targets counted.  With
 * st->record, the lm_head and the cross-entropy go on the tape too (the
 * logits as one [T, V] tensor) and *loss_id is the loss's node; otherwise the
 * lm_head runs over chunks of rows, so a [T, V] matrix never exists at once.
 */
static double
sequence_loss(Gpt2State *st, const int32 *ids, const int32 *targets, int64 T,
			  int64 *counted_out, int32 *loss_id)
{
	int64		V = st->model->cfg.vocab_size;
	int64		chunk = st->record ? T : Max(1, Min(T, (32 << 20) / (V * (int64) sizeof(float))));
	int64		total_counted = 0;
	double		total_loss = 0;
	float	   *logits;

	gpt2_forward(st, ids, T);
	logits = llm_alloc_floats(chunk, V, "logits");
	for (int64 r0 = 0; r0 < T; r0 += chunk)
	{
		int64		nrows = Min(chunk, T - r0);
		double		loss;
		int64		counted = 0;

		for (int64 i = r0; i < r0 + nrows; i++)
			counted += targets[i] != -100;
		if (counted == 0 && !st->record)
			continue;
		gpt2_logits(st, r0, nrows, logits);
		if (counted == 0)
			continue;
		llm_check_status(llm_cross_entropy(logits, targets + r0, nrows, V, &loss, &counted, NULL));
		total_loss += loss * counted;	/* the chunk's mean, back to a sum */
		total_counted += counted;
	}
	if (st->record)
	{
		float		loss = (float4) (total_loss / total_counted);
		int32		id = record(TAPE_OP_MATMUL, st->hidden_id, st->wte_id, 0,
								&(TapeAttrs) {.i = {0, 1}}, logits, T, V);

		*loss_id = tape_record(TAPE_OP_CROSS_ENTROPY, &id, 1,
							   &(TapeAttrs) {.ids = targets, .n_ids = T},
							   &loss, 1, (int64[]) {1}, false);
	}
	pfree(logits);
	*counted_out = total_counted;
	return total_loss / total_counted;
}

/*
 * llm_loss(model, tokens, targets) -> mean cross-entropy of the logits at
 * row t against targets[t], over the t whose target is not -100.  The
 * targets are given explicitly, aligned with the tokens: for next-token
 * prediction pass targets = tokens[2:] || -100 (HF's labels=input_ids
 * shifts internally to the same thing).
 */
PG_FUNCTION_INFO_V1(llm_loss_sql);
Datum
llm_loss_sql(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			T,
				n_targets;
	int32	   *ids = gpt2_token_array("llm_loss", "tokens", PG_GETARG_ARRAYTYPE_P(1), &T);
	int32	   *targets = gpt2_token_array("llm_loss", "targets", PG_GETARG_ARRAYTYPE_P(2), &n_targets);
	const Gpt2Model *m = gpt2_model_get(name);
	int64		counted = 0;
	int32		loss_id;
	double		loss;
	Gpt2State  *st;

	check_sequence("llm_loss", m, ids, T);
	if (n_targets != T)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_loss: %d targets for %d tokens (one target per token)", n_targets, T)));
	check_token_ids("llm_loss", "target", targets, T, m->cfg.vocab_size, true, " (or -100 to ignore)");
	for (int i = 0; i < T; i++)
		counted += targets[i] != -100;
	if (counted == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_loss: every target is the ignore index -100")));

	st = gpt2_state_new(m, T, T);
	st->record = autograd_recording();
	loss = sequence_loss(st, ids, targets, T, &counted, &loss_id);
	gpt2_state_free(st);
	PG_RETURN_FLOAT4((float4) loss);
}

/*
 * The tape of a training batch: tokens and targets [B, T], checked by the
 * caller.  The tape is emptied, then each sequence's forward is recorded
 * as llm_loss records it, the sequences sharing the weights' leaves, and
 * the batch loss -- the mean over every counted target, as the training
 * step computes it -- is sum_b llm_scale(loss_b, counted_b / counted).
 */
void
gpt2_record_batch(const Gpt2Model *m, const int32 *tokens, const int32 *targets,
				  int64 B, int64 T)
{
	Gpt2Leaves	leaves = {NIL, NIL};
	int64		all_counted = 0;
	int32		total_id = 0;
	float		total = 0;

	tape_reset();
	for (int64 i = 0; i < B * T; i++)
		all_counted += targets[i] != -100;
	for (int64 b = 0; b < B; b++)
	{
		int64		counted = 0;
		int32		loss_id;
		float		part;
		int32		inputs[2];
		Gpt2State  *st;
		double		weight;

		for (int64 t = 0; t < T; t++)
			counted += targets[b * T + t] != -100;
		if (counted == 0)
			continue;
		st = gpt2_state_new(m, T, T);
		st->record = true;
		st->leaves = &leaves;
		weight = (double) counted / all_counted;
		part = (float4) (sequence_loss(st, tokens + b * T, targets + b * T, T, &counted, &loss_id) * weight);
		gpt2_state_free(st);
		inputs[0] = tape_record(TAPE_OP_SCALE, &loss_id, 1, &(TapeAttrs) {.f = weight},
								&part, 1, (int64[]) {1}, false);
		if (total_id == 0)
		{
			total_id = inputs[0];
			total = part;
			continue;
		}
		inputs[1] = total_id;
		total += part;
		total_id = tape_record(TAPE_OP_ADD, inputs, 2, NULL, &total, 1, (int64[]) {1}, false);
	}
	list_free_deep(leaves.names);
	list_free(leaves.ids);
}
