/*
 * tape.c -- the tape of a GPT-2 forward from its saved activations
 * (see tape.h).  Nodes are recorded in the order the ops ran, so that
 * llm_tape reads like the forward, and ids are those a learner's SQL would
 * have made op by op.
 */
#include "postgres.h"

#include "support/support.h"
#include "gpt2/tape.h"
#include "autograd/tape.h"
#include "kernels/kernels.h"

/* One recording: the weights' leaves, shared by its sequences. */
typedef struct Recording
{
	const Gpt2Model *m;
	Gpt2ParamInfo *params;		/* gpt2_param_layout()'s list: names, shapes */
	int			n_params;
	int32	   *leaves;			/* [n_params]; 0 until a sequence uses it */
	bool		values;			/* mode full: every node keeps its value */
	float	   *scratch;		/* [T, max(3C, F)]: values recomputed (full) */
	float	   *logits;			/* [T, V]: a sequence's, recomputed (full) */
} Recording;

static Recording
recording_new(const Gpt2Model *m, int64 T)
{
	Recording	r = {.m = m, .values = autograd_mode == AUTOGRAD_FULL};
	int64		n_floats;

	r.params = gpt2_param_layout(m->name, &m->cfg, &r.n_params, &n_floats);
	r.leaves = palloc0(sizeof(int32) * r.n_params);
	if (r.values)
		r.scratch = llm_alloc_floats(T, Max(3 * m->cfg.n_embd, m->cfg.n_inner), "the tape");
	return r;
}

/* The logits of the lm_head over rows [T, C] of lnf (mode full; the training forward keeps none). */
static float *
recording_logits(Recording *r, const float *lnf, int64 T)
{
	if (!r->values)
		return NULL;
	if (r->logits == NULL)
		r->logits = llm_alloc_floats(T, r->m->cfg.vocab_size, "the tape");
	gpt2_lm_head(r->m, lnf, T, r->logits);
	return r->logits;
}

static void
recording_free(Recording *r)
{
	pfree(r->params);
	pfree(r->leaves);
	if (r->scratch)
		pfree(r->scratch);
	if (r->logits)
		pfree(r->logits);
}

/* The leaf of parameter "h.<layer>.<what>" (layer < 0: "<what>") holding `data`. */
static int32
weight(Recording *r, int layer, const char *what, const float *data)
{
	char	   *name = layer < 0 ? pstrdup(what) : psprintf("h.%d.%s", layer, what);

	for (int i = 0; i < r->n_params; i++)
	{
		const Gpt2ParamInfo *p = &r->params[i];

		if (strcmp(p->name, name) != 0)
			continue;
		if (r->leaves[i] == 0)
			r->leaves[i] = tape_leaf(data, p->ndim, p->dims, p->name, false);
		pfree(name);
		return r->leaves[i];
	}
	elog(ERROR, "gpt2_tape: GPT-2 has no parameter \"%s\"", name);
}

/* Record an op whose output out is [rows, cols] (read in mode full only). */
static int32
record(TapeOpKind kind, int32 a, int32 b, int32 c, const TapeAttrs *attrs,
	   const float *out, int64 rows, int64 cols)
{
	int32		inputs[3] = {a, b, c};
	int64		dims[2] = {rows, cols};

	return tape_record(kind, inputs, tape_ops[kind].arity, attrs, out, 2, dims, false);
}

/*
 * out[T, N] = in[T, K] @ w[K, N] + bias[N], a Conv1D layer: an llm_matmul
 * and an llm_add of the bias, out being the value the forward saved (NULL:
 * recompute it too).
 */
static int32
conv1d(Recording *r, int layer, const char *name, int32 in_id, const float *in,
	   const float *w, const float *bias, const float *out, int64 T, int64 K, int64 N)
{
	int32		w_id = weight(r, layer, psprintf("%s.weight", name), w);
	int32		product;

	if (r->values)
		llm_check_status(llm_matmul(in, w, NULL, r->scratch, T, K, N, 0, 0));
	product = record(TAPE_OP_MATMUL, in_id, w_id, 0, &(TapeAttrs) {.i = {0, 0}},
					 r->scratch, T, N);
	if (out == NULL && r->values)
	{
		llm_add(r->scratch, bias, r->scratch, T * N, N);
		out = r->scratch;
	}
	return record(TAPE_OP_ADD, product, weight(r, layer, psprintf("%s.bias", name), bias), 0,
				  NULL, out, T, N);
}

/* LayerNorm of in_id with parameters "<name>.weight" and ".bias", output out [T, C]. */
static int32
layernorm(Recording *r, int layer, const char *name, int32 in_id, const float *g,
		  const float *b, const float *out, int64 T)
{
	int32		b_id = weight(r, layer, psprintf("%s.bias", name), b);
	int32		g_id = weight(r, layer, psprintf("%s.weight", name), g);

	return record(TAPE_OP_LAYERNORM, in_id, g_id, b_id,
				  &(TapeAttrs) {.f = r->m->cfg.layer_norm_eps}, out, T, r->m->cfg.n_embd);
}

/* Block `layer` of sequence s (rows s*T ..) whose input is node x_id; returns its output. */
static int32
block(Recording *r, const Gpt2Activations *acts, int layer, int64 s, int64 T, int32 x_id)
{
	const Gpt2Model *m = r->m;
	const Gpt2Layer *L = &m->layers[layer];
	const Gpt2LayerActs *a = &acts->layers[layer];
	int64		C = m->cfg.n_embd,
				F = m->cfg.n_inner,
				row = s * T;
	int32		id;

	id = layernorm(r, layer, "ln_1", x_id, L->ln1_w, L->ln1_b, a->ln1 + row * C, T);
	id = conv1d(r, layer, "attn.c_attn", id, a->ln1 + row * C, L->attn_w, L->attn_b,
				a->qkv + row * 3 * C, T, C, 3 * C);
	id = record(TAPE_OP_ATTENTION_QKV, id, 0, 0, &(TapeAttrs) {.i = {m->cfg.n_head, 1}},
				a->atty + row * C, T, C);
	id = conv1d(r, layer, "attn.c_proj", id, a->atty + row * C, L->attn_proj_w,
				L->attn_proj_b, NULL, T, C, C);
	x_id = record(TAPE_OP_ADD, x_id, id, 0, NULL, a->res_mid + row * C, T, C);

	id = layernorm(r, layer, "ln_2", x_id, L->ln2_w, L->ln2_b, a->ln2 + row * C, T);
	id = conv1d(r, layer, "mlp.c_fc", id, a->ln2 + row * C, L->fc_w, L->fc_b,
				a->fc + row * F, T, C, F);
	id = record(TAPE_OP_GELU, id, 0, 0, NULL, a->fc_gelu + row * F, T, F);
	id = conv1d(r, layer, "mlp.c_proj", id, a->fc_gelu + row * F, L->mlp_proj_w,
				L->mlp_proj_b, NULL, T, F, C);
	return record(TAPE_OP_ADD, x_id, id, 0, NULL, a->res_out + row * C, T, C);
}

/*
 * Sequence s of a forward from position 0 (rows s*T ..), tokens [T], up to
 * ln_f: returns the node of ln_f's output; *wte_id is the leaf of wte.
 */
static int32
sequence(Recording *r, const Gpt2Activations *acts, const int32 *tokens, int64 s, int64 T,
		 int32 *wte_id)
{
	const Gpt2Model *m = r->m;
	int64		C = m->cfg.n_embd,
				row = s * T;
	int32		tokens_id,
				positions_id,
				x_id;

	*wte_id = weight(r, -1, "wte.weight", m->wte);
	if (r->values)
		llm_embedding(m->wte, tokens, r->scratch, T, C);
	tokens_id = record(TAPE_OP_EMBEDDING, *wte_id, 0, 0, &(TapeAttrs) {.ids = tokens, .n_ids = T},
					   r->scratch, T, C);
	positions_id = record(TAPE_OP_SLICE, weight(r, -1, "wpe.weight", m->wpe), 0, 0,
						  &(TapeAttrs) {.i = {0, T}}, m->wpe, T, C);
	x_id = record(TAPE_OP_ADD, tokens_id, positions_id, 0, NULL, acts->encoded + row * C, T, C);
	for (int l = 0; l < m->cfg.n_layer; l++)
		x_id = block(r, acts, l, s, T, x_id);
	return layernorm(r, -1, "ln_f", x_id, m->lnf_w, m->lnf_b, acts->lnf + row * C, T);
}

/*
 * Sequence s of the batch, its lm_head and its mean cross-entropy (counted
 * targets); returns the loss node, *loss its value (mode full).
 */
static int32
sequence_loss(Recording *r, const Gpt2Batch *b, int64 s, int64 counted, double *loss)
{
	int64		T = b->T,
				V = r->m->cfg.vocab_size;
	const int32 *targets = b->targets + s * T;
	int32		wte_id;
	int32		id = sequence(r, b->acts, b->tokens + s * T, s, T, &wte_id);
	const float *logits = recording_logits(r, b->acts->lnf + s * T * r->m->cfg.n_embd, T);
	float		value = 0;

	id = record(TAPE_OP_MATMUL, id, wte_id, 0, &(TapeAttrs) {.i = {0, 1}}, logits, T, V);
	*loss = 0;
	if (r->values)
	{
		double		mean;

		llm_check_status(llm_cross_entropy(logits, targets, T, V, &mean, &counted, NULL));
		*loss = mean * counted / counted;	/* as llm_loss: a sum over its chunks, / counted */
		value = (float4) *loss;
	}
	return tape_record(TAPE_OP_CROSS_ENTROPY, &id, 1, &(TapeAttrs) {.ids = targets, .n_ids = T},
					   &value, 1, (int64[]) {1}, false);
}

static int64
count_targets(const int32 *targets, int64 n)
{
	int64		counted = 0;

	for (int64 i = 0; i < n; i++)
		counted += targets[i] != -100;
	return counted;
}

void
gpt2_tape_batch(const Gpt2Batch *b)
{
	Recording	r;
	int64		all_counted = count_targets(b->targets, b->N);
	int32		total_id = 0;
	float		total = 0;

	tape_reset();
	r = recording_new(b->model, b->T);
	for (int64 s = 0; s < b->B; s++)
	{
		int64		counted = count_targets(b->targets + s * b->T, b->T);
		double		weight = (double) counted / all_counted;
		double		loss;
		int32		inputs[2];
		float		part;

		if (counted == 0)
			continue;
		inputs[0] = sequence_loss(&r, b, s, counted, &loss);
		part = (float4) (loss * weight);
		inputs[0] = tape_record(TAPE_OP_SCALE, inputs, 1, &(TapeAttrs) {.f = weight},
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
	recording_free(&r);
}

void
gpt2_tape_loss(const Gpt2Batch *b)
{
	Recording	r = recording_new(b->model, b->T);
	double		loss;

	Assert(b->B == 1);
	sequence_loss(&r, b, 0, b->counted, &loss);
	recording_free(&r);
}

void
gpt2_tape_logits(const Gpt2Model *m, const Gpt2Activations *acts, const int32 *tokens,
				 int64 T, bool last_only, const float *logits)
{
	Recording	r = recording_new(m, T);
	int64		C = m->cfg.n_embd;
	int64		dims[2] = {last_only ? 1 : T, m->cfg.vocab_size};
	int32		inputs[2];

	inputs[0] = sequence(&r, acts, tokens, 0, T, &inputs[1]);
	if (last_only)
		inputs[0] = record(TAPE_OP_SLICE, inputs[0], 0, 0, &(TapeAttrs) {.i = {T - 1, T}},
						   acts->lnf + (T - 1) * C, 1, C);
	/* findable: a later llm_cross_entropy(llm_logits(...), ...) links to it */
	tape_record(TAPE_OP_MATMUL, inputs, 2, &(TapeAttrs) {.i = {0, 1}}, logits, 2, dims, true);
	recording_free(&r);
}
