/*
 * step.c -- a training step from SQL: the batch given as token arrays, the
 * forward and backward of gpt2/ on the training state (and, while
 * pg_llm.autograd_mode records, the tape built from that forward).
 *
 *   llm_gradients(model, tokens, targets)   the gradients, nothing written
 *   llm_train_step(model, tokens, targets, lr, ...)   forward, backward,
 *       clip, AdamW, write-back and a log row; returns the loss
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "pg_llm.h"
#include "gpt2/tape.h"
#include "train/batch.h"
#include "autograd/tape.h"
#include "gpt2/backward.h"
#include "kernels/kernels.h"
#include "tensor/tensor.h"
#include "train/state.h"
#include "train/step.h"

LlmBatch
llm_batch_from_arrays(const char *who, const Gpt2Config *cfg, const char *model,
					  ArrayType *tokens, ArrayType *targets)
{
	LlmBatch	b;
	int			dims[2],		/* [B][T]; a [T] array reads as [1][T] */
				target_dims[2];

	b.tokens = int_array_values(who, "tokens", tokens, 2, dims);
	b.targets = int_array_values(who, "targets", targets, 2, target_dims);
	b.B = dims[0];
	b.T = dims[1];
	if (b.B * b.T == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: the token array is empty", who)));
	if (ARR_NDIM(tokens) != ARR_NDIM(targets) || target_dims[0] != b.B || target_dims[1] != b.T)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: targets [%d][%d] do not match tokens [%d][%d] (one target per token)",
						who, target_dims[0], target_dims[1], b.B, b.T)));
	llm_batch_check(who, &b, cfg, model);
	return b;
}

double
llm_train_state_gradients(LlmTrainState *st, const LlmBatch *batch)
{
	Gpt2Batch  *b = gpt2_batch_new(&st->weights, batch->B, batch->T);
	double		loss;

	llm_train_state_zero_grad(st);
	if (st->data_bf16 != NULL)
	{
		/* bf16: the matmuls read this step's weights rounded */
		llm_round_bf16_array(st->data, st->data_bf16, st->n_floats);
		b->bf16 = &st->weights_bf16;
	}
	loss = gpt2_batch_forward(b, batch->tokens, batch->targets, &st->grads);
	/* (the tape records fp32 ops: a bf16 forward is not recorded) */
	if (autograd_recording() && b->bf16 == NULL)
		gpt2_tape_batch(b);
	gpt2_batch_backward(b, &st->grads);
	gpt2_batch_free(b);
	return loss;
}

/*
 * llm_gradients(model, tokens, targets) RETURNS TABLE(name text, grad
 * tensor): d(mean cross-entropy)/d(each parameter) for the batch, in
 * llm_param_shapes order; nothing is written.
 */
PG_FUNCTION_INFO_V1(llm_gradients);
Datum
llm_gradients(PG_FUNCTION_ARGS)
{
	const char *who = "llm_gradients";
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *model;
	LlmTrainState *st;
	LlmBatch	batch;

	for (int i = 0; i < 3; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s: argument %d must not be NULL", who, i + 1)));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	st = llm_train_state_load(model, LLM_STATE_READ_ONLY, CurrentMemoryContext);
	batch = llm_batch_from_arrays(who, &st->cfg, model, PG_GETARG_ARRAYTYPE_P(1),
								  PG_GETARG_ARRAYTYPE_P(2));
	llm_train_state_gradients(st, &batch);

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < st->n_params; i++)
	{
		const Gpt2ParamInfo *p = &st->params[i];
		Tensor	   *g = tensor_new(p->ndim, p->dims);
		Datum		values[2];
		bool		nulls[2] = {false, false};

		memcpy(g->data, st->grad + p->offset, sizeof(float) * p->numel);
		values[0] = CStringGetTextDatum(p->name);
		values[1] = PointerGetDatum(g);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	llm_train_state_free(st);
	return (Datum) 0;
}

/*
 * llm_train_step(model, tokens, targets, lr, weight_decay, beta1, beta2,
 * eps, clip, dtype) RETURNS real: one training step on the batch; returns
 * the loss before the update.
 */
PG_FUNCTION_INFO_V1(llm_train_step);
Datum
llm_train_step(PG_FUNCTION_ARGS)
{
	const char *who = "llm_train_step";
	char	   *model;
	LlmAdamW	hp;
	double		clip = -1;
	LlmTrainState *st;
	LlmBatch	batch;
	LlmTrainLogEntry entry = {0};
	double		loss;
	instr_time	t[6];

	for (int i = 0; i < 8; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s: only clip may be NULL (argument %d is)", who, i + 1)));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	hp = llm_adamw_settings(who, PG_GETARG_FLOAT8(3), PG_GETARG_FLOAT8(4), PG_GETARG_FLOAT8(5),
							PG_GETARG_FLOAT8(6), PG_GETARG_FLOAT8(7));
	if (!PG_ARGISNULL(8))
	{
		clip = PG_GETARG_FLOAT8(8);
		if (!(clip > 0) || isinf(clip))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: clip must be positive and finite (or NULL: no clipping), not %g",
							who, clip)));
	}

	INSTR_TIME_SET_CURRENT(t[0]);
	st = llm_train_state_load(model, 0, CurrentMemoryContext);
	/* (a 0.2.0 catalog's llm_train_step has no dtype: fp32) */
	if (PG_NARGS() > 9)
	{
		if (PG_ARGISNULL(9))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s: only clip may be NULL (argument 10, dtype, is)", who)));
		llm_train_state_set_dtype(st, who, text_to_cstring(PG_GETARG_TEXT_PP(9)));
	}
	batch = llm_batch_from_arrays(who, &st->cfg, model, PG_GETARG_ARRAYTYPE_P(1),
								  PG_GETARG_ARRAYTYPE_P(2));
	INSTR_TIME_SET_CURRENT(t[1]);
	loss = llm_train_state_gradients(st, &batch);
	INSTR_TIME_SET_CURRENT(t[2]);
	llm_train_state_clip(st, clip);
	llm_train_state_adamw(st, &hp);
	INSTR_TIME_SET_CURRENT(t[3]);

	entry.loss = loss;
	entry.lr = hp.lr;
	{
		instr_time	took = t[3];

		INSTR_TIME_SUBTRACT(took, t[1]);
		entry.tokens_per_s = (double) batch.B * batch.T / Max(INSTR_TIME_GET_DOUBLE(took), 1e-9);
	}
	entry.hp = hp;
	entry.clip = clip;
	entry.tokens = batch.tokens;
	entry.targets = batch.targets;
	entry.B = batch.B;
	entry.T = batch.T;
	llm_train_state_log(st, &entry);
	llm_train_state_record_grad_stats(st);
	INSTR_TIME_SET_CURRENT(t[4]);
	llm_train_state_write_back(st, true);
	INSTR_TIME_SET_CURRENT(t[5]);
	llm_train_state_free(st);

	for (int i = 5; i > 0; i--)
		INSTR_TIME_SUBTRACT(t[i], t[i - 1]);
	ereport(DEBUG1,
			(errmsg("%s: load %.3f s, forward and backward %.3f s, clip and AdamW %.3f s, "
					"logs %.3f s, write-back %.3f s", who, INSTR_TIME_GET_DOUBLE(t[1]),
					INSTR_TIME_GET_DOUBLE(t[2]), INSTR_TIME_GET_DOUBLE(t[3]),
					INSTR_TIME_GET_DOUBLE(t[4]), INSTR_TIME_GET_DOUBLE(t[5]))));
	PG_RETURN_FLOAT4((float4) loss);
}
