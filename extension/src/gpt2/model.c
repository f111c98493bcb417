/*
 * model.c -- GPT-2's parameters: the one list of its tensors, with
 * HuggingFace's names and shapes (Conv1D weights are [in, out]; lm_head is
 * tied to wte and not listed), and where each sits in a float arena.
 */
#include "postgres.h"

#include "gpt2/model.h"
#include "tensor/tensor.h"

/* Arena offsets are rounded up to 16 floats: every tensor starts on 64 bytes. */
#define ARENA_ALIGN_FLOATS 16

/* The list being built, and for each entry the pointer of `m` to set. */
typedef struct ParamList
{
	const char *model;			/* for messages */
	Gpt2ParamInfo *items;
	float	 ***where;			/* [n]: &m->wte, &m->layers[0].ln1_w, ... */
	llm_bf16 ***where16;		/* [n]: &m->wte16, ..., NULL for a 1-D tensor */
	int			n;
	int64		n_floats;		/* arena size so far */
	int64		n_bytes_bf16;	/* bf16 arena size so far */
} ParamList;

/*
 * Append a tensor of shape [d0] (d1 == 0) or [d0, d1], bound through
 * `where` (and, a 2-D one in a bf16 arena, `where16`).  A config whose
 * shapes are not tensors (a dimension over 2^31 - 1, more than
 * LLM_MAX_ELEMS values) is ERROR 22003 naming the parameter and its shape.
 * So every entry is under 2^28 floats and there are fewer than 2^25 of
 * them (see param_list): the arena size cannot overflow.
 */
static void
add(ParamList *list, char *name, float **where, llm_bf16 **where16, int64 d0, int64 d1)
{
	Gpt2ParamInfo *p = &list->items[list->n];

	p->name = name;
	p->ndim = d1 == 0 ? 1 : 2;
	p->dims[0] = d0;
	p->dims[1] = d1;
	tensor_check_shape(psprintf("model \"%s\": parameter \"%s\"", list->model, name),
					   p->ndim, p->dims);
	p->numel = p->ndim == 1 ? d0 : d0 * d1;
	p->offset = list->n_floats;
	p->offset_bf16 = list->n_bytes_bf16;
	list->where[list->n] = where;
	list->where16[list->n++] = where16;
	list->n_floats += TYPEALIGN(ARENA_ALIGN_FLOATS, p->numel);
	list->n_bytes_bf16 += TYPEALIGN(ARENA_ALIGN_FLOATS * sizeof(float),
									p->numel * (p->ndim == 2 ? sizeof(llm_bf16) : sizeof(float)));
}

/* Every parameter of GPT-2, in llm_param_shapes() order; m->layers is allocated here. */
static ParamList
param_list(Gpt2Model *m)
{
	const Gpt2Config *c = &m->cfg;
	int64		C = c->n_embd,
				F = c->n_inner;
	ParamList	list = {.model = m->name};
	Size		n_params = 4 + 12 * (Size) c->n_layer;

	if (n_params > MaxAllocSize / sizeof(Gpt2ParamInfo))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model \"%s\" has n_layer = %d, more layers than pg_llm can list",
						m->name, c->n_layer)));
	m->layers = palloc0(sizeof(Gpt2Layer) * c->n_layer);
	list.items = palloc(sizeof(Gpt2ParamInfo) * n_params);
	list.where = palloc(sizeof(float **) * n_params);
	list.where16 = palloc(sizeof(llm_bf16 **) * n_params);
	add(&list, "wte.weight", &m->wte, &m->wte16, c->vocab_size, C);
	add(&list, "wpe.weight", &m->wpe, &m->wpe16, c->n_positions, C);
	for (int l = 0; l < c->n_layer; l++)
	{
		Gpt2Layer  *L = &m->layers[l];

		add(&list, psprintf("h.%d.ln_1.weight", l), &L->ln1_w, NULL, C, 0);
		add(&list, psprintf("h.%d.ln_1.bias", l), &L->ln1_b, NULL, C, 0);
		add(&list, psprintf("h.%d.attn.c_attn.weight", l), &L->attn_w, &L->attn_w16, C, 3 * C);
		add(&list, psprintf("h.%d.attn.c_attn.bias", l), &L->attn_b, NULL, 3 * C, 0);
		add(&list, psprintf("h.%d.attn.c_proj.weight", l), &L->attn_proj_w, &L->attn_proj_w16, C, C);
		add(&list, psprintf("h.%d.attn.c_proj.bias", l), &L->attn_proj_b, NULL, C, 0);
		add(&list, psprintf("h.%d.ln_2.weight", l), &L->ln2_w, NULL, C, 0);
		add(&list, psprintf("h.%d.ln_2.bias", l), &L->ln2_b, NULL, C, 0);
		add(&list, psprintf("h.%d.mlp.c_fc.weight", l), &L->fc_w, &L->fc_w16, C, F);
		add(&list, psprintf("h.%d.mlp.c_fc.bias", l), &L->fc_b, NULL, F, 0);
		add(&list, psprintf("h.%d.mlp.c_proj.weight", l), &L->mlp_proj_w, &L->mlp_proj_w16, F, C);
		add(&list, psprintf("h.%d.mlp.c_proj.bias", l), &L->mlp_proj_b, NULL, C, 0);
	}
	add(&list, "ln_f.weight", &m->lnf_w, NULL, C, 0);
	add(&list, "ln_f.bias", &m->lnf_b, NULL, C, 0);
	return list;
}

Gpt2ParamInfo *
gpt2_param_layout(const char *model, const Gpt2Config *cfg, int *n_params, int64 *n_floats)
{
	Gpt2Model	m = {.name = (char *) model, .cfg = *cfg};
	ParamList	list = param_list(&m);

	pfree(m.layers);
	pfree(list.where);
	pfree(list.where16);
	*n_params = list.n;
	*n_floats = list.n_floats;
	return list.items;
}

void
gpt2_model_bind(Gpt2Model *m, float *arena)
{
	ParamList	list = param_list(m);

	for (int i = 0; i < list.n; i++)
		*list.where[i] = arena + list.items[i].offset;
	m->n_floats = list.n_floats;
	pfree(list.where);
	pfree(list.where16);
	pfree(list.items);
}

int64
gpt2_bf16_arena_bytes(const Gpt2ParamInfo *params, int n_params)
{
	const Gpt2ParamInfo *last = &params[n_params - 1];

	return last->offset_bf16 +
		TYPEALIGN(ARENA_ALIGN_FLOATS * sizeof(float),
				  last->numel * (last->ndim == 2 ? sizeof(llm_bf16) : sizeof(float)));
}

void
gpt2_model_bind_bf16(Gpt2Model *m, char *arena)
{
	ParamList	list = param_list(m);

	for (int i = 0; i < list.n; i++)
	{
		char	   *at = arena + list.items[i].offset_bf16;

		if (list.where16[i])
		{
			*list.where16[i] = (llm_bf16 *) at;
			*list.where[i] = NULL;
		}
		else
			*list.where[i] = (float *) at;
	}
	m->n_floats = list.n_floats;
	pfree(list.where);
	pfree(list.where16);
	pfree(list.items);
}
