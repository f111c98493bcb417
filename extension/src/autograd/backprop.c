/*
 * backprop.c -- reverse mode over the tape, and the SQL functions around
 * it: llm_backprop, llm_tensor_rt_leaf, llm_accumulate_grads,
 * llm_prune_autograd_state.
 *
 * llm_backprop(root, seed) seeds the root's gradient (1 for a scalar, else
 * `seed`), then visits the ops from the one that made the root back to the
 * first, each op whose output has a gradient adding into its inputs'
 * gradients through the op table.  Tape order is a topological order (an
 * op's inputs were recorded before it), so one reverse pass is enough.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "autograd/tape.h"
#include "support/support.h"

static void
require_values(const Tape *t, int32 id, int32 op_id)
{
	if (t->tensors[id].data == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_backprop: tensor %d (of op %d, %s) has no values: it was recorded in mode meta",
						id, op_id, tape_ops[t->ops[op_id].kind].name),
				 errhint("Record with SELECT llm_autograd_mode('full'), then run the computation again.")));
}

static float *
zeroed_grad(Tape *t, TapeTensor *node)
{
	if (node->grad == NULL)
		node->grad = MemoryContextAllocExtended(t->mcxt, node->numel * sizeof(float),
												MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	return node->grad;
}

PG_FUNCTION_INFO_V1(llm_backprop_sql);
Datum
llm_backprop_sql(PG_FUNCTION_ARGS)
{
	Tape	   *t = tape_get();
	int32		root;
	TapeTensor *r;
	int32		reached = 0;
	MemoryContext scratch,
				old;

	if (t->n_ops == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_backprop: the tape is empty, nothing was recorded"),
				 errhint("SELECT llm_autograd_mode('full'), then run the ops to differentiate.")));
	root = PG_ARGISNULL(0) ? t->ops[t->n_ops].output : PG_GETARG_INT32(0);
	if (root < 1 || root > t->n_tensors)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_backprop: root %d is not a tensor of the tape (ids 1..%d)", root, t->n_tensors)));
	r = &t->tensors[root];
	if (PG_ARGISNULL(1) && r->numel != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_backprop: root %d has shape %s, not a scalar, and no seed gradient was given",
						root, shape_str(r->ndim, r->dims)),
				 errhint("Pass seed => a tensor of the root's shape: the gradient of the loss with respect to the root.")));
	if (!PG_ARGISNULL(1))
	{
		Tensor	   *seed = PG_GETARG_TENSOR_P(1);
		bool		same = seed->ndim == r->ndim;

		for (int d = 0; same && d < r->ndim; d++)
			same = seed->dims[d] == r->dims[d];
		if (!same)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("llm_backprop: the seed has shape %s, the root %d has shape %s",
							tensor_shape_str(seed), root, shape_str(r->ndim, r->dims))));
	}

	for (int32 id = 1; id <= t->n_tensors; id++)
		if (t->tensors[id].grad != NULL)
		{
			pfree(t->tensors[id].grad);
			t->tensors[id].grad = NULL;
		}
	t->grads_dirty = true;
	zeroed_grad(t, r);
	if (PG_ARGISNULL(1))
		r->grad[0] = 1.0f;
	else
		memcpy(r->grad, PG_GETARG_TENSOR_P(1)->data, r->numel * sizeof(float));

	scratch = AllocSetContextCreate(CurrentMemoryContext, "llm_backprop", ALLOCSET_DEFAULT_SIZES);
	for (int32 op_id = r->produced_by; op_id >= 1; op_id--)
	{
		TapeOp	   *op = &t->ops[op_id];
		TapeTensor *out = &t->tensors[op->output];
		TapeTensor *in[TAPE_MAX_INPUTS];
		float	   *din[TAPE_MAX_INPUTS];

		if (out->grad == NULL)
			continue;			/* the root does not depend on this op */
		CHECK_FOR_INTERRUPTS();
		for (int i = 0; i < op->n_inputs; i++)
		{
			require_values(t, op->inputs[i], op_id);
			in[i] = &t->tensors[op->inputs[i]];
			din[i] = zeroed_grad(t, in[i]);
		}
		if (op->kind == TAPE_OP_SOFTMAX)
			require_values(t, op->output, op_id);
		old = MemoryContextSwitchTo(scratch);
		tape_ops[op->kind].methods->backward(op, in, out, din, out->grad);
		MemoryContextSwitchTo(old);
		MemoryContextReset(scratch);
	}
	MemoryContextDelete(scratch);
	for (int32 id = 1; id <= t->n_tensors; id++)
		reached += t->tensors[id].grad != NULL;
	PG_RETURN_INT32(reached);
}

/*
 * llm_tensor_rt_leaf(t, param_name): t, now a leaf of the tape named
 * param_name (a row of llm_param, or any name), so that later ops taking t
 * link to this leaf and llm_accumulate_grads finds its gradient.  A NULL t
 * is returned as it is, and records nothing.
 */
PG_FUNCTION_INFO_V1(llm_tensor_rt_leaf_sql);
Datum
llm_tensor_rt_leaf_sql(PG_FUNCTION_ARGS)
{
	Tensor	   *x;
	char	   *name = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		dims[LLM_MAX_NDIM];

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	x = PG_GETARG_TENSOR_P(0);
	if (autograd_recording())
	{
		for (int d = 0; d < x->ndim; d++)
			dims[d] = x->dims[d];
		tape_leaf(x->data, x->ndim, dims, name, true);
	}
	PG_RETURN_TENSOR_P(x);
}

PG_FUNCTION_INFO_V1(llm_prune_autograd_state_sql);
Datum
llm_prune_autograd_state_sql(PG_FUNCTION_ARGS)
{
	tape_reset();
	tape_store();
	PG_RETURN_VOID();
}

/*
 * llm_accumulate_grads(model): llm_param.grad += the gradient of every
 * leaf named after one of the model's parameters (summed over leaves of
 * the same name; a NULL grad counts as zero).  Returns how many
 * parameters it updated.
 */
PG_FUNCTION_INFO_V1(llm_accumulate_grads_sql);
Datum
llm_accumulate_grads_sql(PG_FUNCTION_ARGS)
{
	text	   *model = PG_GETARG_TEXT_PP(0);
	Tape	   *t = tape_get();
	Oid			relid = llm_table_oid("llm_param");
	Oid			tensor_type = get_atttype(relid, get_attnum(relid, "data"));
	Oid			types[3] = {TEXTOID, TEXTOID, tensor_type};
	bool	   *done = palloc0((t->n_tensors + 1) * sizeof(bool));
	SPIPlanPtr	select,
				update;
	int32		updated = 0;

	SPI_connect();
	llm_require_model_owner(text_to_cstring(model));
	select = SPI_prepare(psprintf("SELECT grad FROM %s WHERE model = $1 AND name = $2",
								  llm_table_name("llm_param")), 2, types);
	update = SPI_prepare(psprintf("UPDATE %s SET grad = $3 WHERE model = $1 AND name = $2",
								  llm_table_name("llm_param")), 3, types);
	for (int32 id = 1; id <= t->n_tensors; id++)
	{
		TapeTensor *node = &t->tensors[id];
		Datum		values[3];
		Tensor	   *sum;
		bool		isnull;

		if (done[id] || node->param_name == NULL || node->grad == NULL)
			continue;
		values[0] = PointerGetDatum(model);
		values[1] = CStringGetTextDatum(node->param_name);
		if (SPI_execute_plan(select, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "llm_accumulate_grads: reading llm_param failed");
		if (SPI_processed == 0)
			continue;			/* a leaf named after no parameter of this model */
		sum = tensor_new(node->ndim, node->dims);
		if (tensor_numel(sum) != node->numel)
			elog(ERROR, "llm_accumulate_grads: bad leaf %d", id);
		{
			Datum		old = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
			{
				Tensor	   *g = DatumGetTensorP(old);

				if (tensor_numel(g) != node->numel)
					ereport(ERROR,
							(errcode(ERRCODE_DATA_EXCEPTION),
							 errmsg("llm_accumulate_grads: \"%s\" has shape %s in llm_param, the tape's leaf %d has %s",
									node->param_name, tensor_shape_str(g), id,
									shape_str(node->ndim, node->dims))));
				memcpy(sum->data, g->data, node->numel * sizeof(float));
			}
		}
		for (int32 other = id; other <= t->n_tensors; other++)
		{
			TapeTensor *o = &t->tensors[other];

			if (o->param_name == NULL || o->grad == NULL || strcmp(o->param_name, node->param_name) != 0)
				continue;
			if (o->numel != node->numel)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("llm_accumulate_grads: leaves %d and %d are both \"%s\" but have shapes %s and %s",
								id, other, node->param_name, shape_str(node->ndim, node->dims),
								shape_str(o->ndim, o->dims))));
			for (int64 k = 0; k < o->numel; k++)
				sum->data[k] += o->grad[k];
			done[other] = true;
		}
		values[2] = PointerGetDatum(sum);
		if (SPI_execute_plan(update, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "llm_accumulate_grads: writing llm_param failed");
		updated++;
	}
	SPI_finish();
	PG_RETURN_INT32(updated);
}
