/*
 * state.h -- the training state of one GPT-2 model, held in backend memory
 * while it trains (state.c), and the optimizer steps on it (optimizer.c).
 *
 * Parameters, gradients and AdamW's two moments are four float arenas with
 * the weight cache's layout (gpt2_param_layout in gpt2/model.h): the
 * forward pass runs on st->weights as it runs on the cache, and the backward
 * writes gradients through st->grads, whose pointers have the same names.
 *
 *   LlmTrainState *st = llm_train_state_load("lab", 0, CurrentMemoryContext);
 *   for each batch:
 *       llm_train_state_zero_grad(st);
 *       ... forward on &st->weights, backward into st->grad (through st->grads) ...
 *       norm = llm_train_state_clip(st, 1.0);          // clip_grad_norm_
 *       hp.lr = llm_lr_at(&schedule, i);               // i-th step of the run, from 0
 *       llm_train_state_adamw(st, &hp);                // st->step + 1
 *       llm_train_state_log(st, &entry);               // a row of llm_train_log
 *       llm_train_state_record_grad_stats(st);         // rows of llm_grad_stats
 *       every save_every steps and at the end:
 *           llm_train_state_write_back(st, with_grad); // one UPDATE of llm_param, a row of llm_train_lineage
 *   llm_train_state_free(st);
 *
 * Memory: the state lives in its own context, a child of `parent`.  For one
 * SQL call pass CurrentMemoryContext: an ERROR frees it with the call.  A
 * procedure that COMMITs between steps needs a context that outlives each
 * transaction (e.g. TopMemoryContext) and must free the state itself on
 * error (PG_FINALLY).
 *
 * Transactions: each write-back is one statement inside the caller's
 * transaction; until that transaction commits, llm_param keeps the last
 * committed write-back, whole.  A cancel or a killed backend therefore
 * leaves llm_param exactly at the last committed write-back.
 */
#ifndef PG_LLM_TRAIN_STATE_H
#define PG_LLM_TRAIN_STATE_H

#include "postgres.h"

#include "gpt2/model_cache.h"
#include "kernels/optim.h"

typedef struct LlmTrainState
{
	MemoryContext mcxt;			/* owns the state and all it points to */
	char	   *model;
	Gpt2Config	cfg;
	Oid			config_relid;	/* OID of llm_model_config, as in the weight cache */
	int64		version;		/* llm_model_config.version of what the arenas
								 * hold: as loaded, or as last written back */

	int			n_params;
	Gpt2ParamInfo *params;		/* HF name, shape, offset; llm_param_shapes order */
	LlmParamRange *ranges;		/* the same for the kernels; decay = (ndim >= 2) */
	int64		n_floats;		/* floats in each arena */

	float	   *data;			/* the weights */
	float	   *grad;			/* their gradients */
	float	   *m;				/* AdamW's first moment */
	float	   *v;				/* AdamW's second moment */
	int64		step;			/* AdamW updates taken (llm_param.step) */

	Gpt2Model	weights;		/* pointers into data, for gpt2_batch_forward */
	Gpt2Model	grads;			/* pointers into grad: grads.layers[l].fc_w is
								 * the gradient of h.l.mlp.c_fc.weight */

	/*
	 * bf16 mixed precision (dtype 'bf16', llm_train_state_set_dtype): data
	 * rounded to bf16 before every forward, which the matmuls read (Gpt2Batch.
	 * bf16); data, grad, m and v stay fp32.  NULL: fp32 training.
	 */
	float	   *data_bf16;
	Gpt2Model	weights_bf16;	/* pointers into data_bf16 */

	/* measured by the latest clip and update, for llm_grad_stats */
	float	   *grad_norms;		/* [n_params] gradient norms before clipping */
	float		grad_norm;		/* their norm: the total before clipping */
	int64		norms_step;		/* the update those gradients were for */
	double	   *update_sq;		/* [n_params] sum of squares of the last change of data */
	int64		update_step;	/* the update update_sq measured */

	bool		consistent;		/* false while (and if) an update was cut short */

	/* the history of the weights (lineage.c) */
	const char *run;			/* llm_train_run.run of the named run training it, or NULL */
	bool		keeps_history;	/* the database has llm_train_lineage */
	int64		lineage;		/* llm_train_lineage.id the arenas build on (0: none) */
	int64	   *unsaved_log;	/* llm_train_log ids of the steps taken since */
	int			n_unsaved_log;
	int			max_unsaved_log;
} LlmTrainState;

/* What llm_train_state_load reads besides data, m, v and step. */
#define LLM_STATE_LOAD_GRAD 0x1 /* the grad column too (NULL is an error) */
#define LLM_STATE_READ_ONLY 0x2 /* never written back: the caller need not own the model */

/*
 * The training state of `model`, read from llm_param in the calling
 * statement's snapshot: data, m and v (NULL m or v: zeros), step (equal in
 * every row) and, with LLM_STATE_LOAD_GRAD, grad; otherwise grad is zeros;
 * lineage: where the weights' history is (llm_train_head).
 * ERRORs: unknown model (42704), a model the caller does not own unless
 * LLM_STATE_READ_ONLY (42501), a missing or misshapen parameter (22000),
 * rows whose steps differ (22000), a NULL grad asked for (22004).
 */
extern LlmTrainState *llm_train_state_load(const char *model, int flags, MemoryContext parent);

extern void llm_train_state_free(LlmTrainState *st);

/*
 * Train in `dtype`: 'fp32' (the default) or 'bf16', mixed precision with
 * fp32 master weights and AdamW state (Gpt2Batch.bf16 in gpt2/forward.h
 * says what is rounded); bf16 costs one more arena.  ERROR 22023 naming
 * any other dtype.
 */
extern void llm_train_state_set_dtype(LlmTrainState *st, const char *who, const char *dtype);

/* "bf16" or "fp32": what the state trains in, for the logs. */
extern const char *llm_train_state_dtype(const LlmTrainState *st);

/* Index of parameter `name` in st->params, or -1. */
extern int	llm_train_state_find(const LlmTrainState *st, const char *name);

/*
 * Write data, m, v and step (and grad, or NULL when !with_grad: llm_param
 * never keeps gradients older than its weights) to llm_param in ONE UPDATE
 * statement, then note the new version and add it to the weights' history
 * (llm_train_state_record_write_back).  The row trigger's checks are
 * cheap for it (shapes only, read from headers), and no new-row copy is
 * kept for the statement trigger.
 * ERROR 40001, nothing written, when llm_param changed since the state was
 * read or last written (another session, a manual UPDATE): the version
 * moved.  The config row is locked first, so two sessions writing back the
 * same model take turns.
 */
extern void llm_train_state_write_back(LlmTrainState *st, bool with_grad);

/* ---- steps (optimizer.c) ------------------------------------------------- */

extern void llm_train_state_zero_grad(LlmTrainState *st);

/*
 * clip_grad_norm_(max_norm) over st->grad: returns the norm before
 * clipping, and keeps the per-tensor norms for llm_grad_stats.
 * max_norm <= 0 measures without clipping.
 */
extern float llm_train_state_clip(LlmTrainState *st, double max_norm);

/*
 * One AdamW update of data, m and v from grad, with hp's settings (hp->step
 * is ignored: the update is number st->step + 1).  st->step advances.
 */
extern void llm_train_state_adamw(LlmTrainState *st, const LlmAdamW *hp);

/* One row of llm_train_log: what happened at a step and how to replay it. */
typedef struct LlmTrainLogEntry
{
	double		loss;			/* NaN: not computed by this step (NULL) */
	double		lr;
	double		tokens_per_s;	/* < 0: unknown (NULL) */
	const int64 *batch;			/* llm_dataset ids of the batch */
	int			batch_size;
	LlmAdamW	hp;				/* beta1, beta2, eps, weight_decay (lr above) */
	double		clip;			/* max_norm, <= 0: no clipping (NULL) */
	const int32 *tokens;		/* [B, T] the batch itself, or NULL */
	const int32 *targets;		/* [B, T] */
	int			B,
				T;
} LlmTrainLogEntry;

/*
 * The AdamW settings of a call, checked as torch.optim.AdamW checks them
 * (ERROR 22023 naming the setting and its value).
 */
extern LlmAdamW llm_adamw_settings(const char *who, double lr, double weight_decay,
								   double beta1, double beta2, double eps);

/*
 * INSERT a row of llm_train_log at st->step, with st->grad_norm and st->run;
 * the next write-back stamps it (llm_train_state_record_write_back).
 */
extern void llm_train_state_log(LlmTrainState *st, const LlmTrainLogEntry *e);

/*
 * INSERT one row of llm_grad_stats per parameter at st->step: the gradient
 * norm before clipping, the weights' norm after the update, and the update
 * / data ratio ||change|| / ||data||.  ERROR unless a clip and an update
 * came before.
 */
extern void llm_train_state_record_grad_stats(LlmTrainState *st);

/* ---- the history of the weights (lineage.c) ------------------------------------ */

/*
 * st->lineage = llm_train_head(model), 0 for none (SPI connected).  A
 * database whose pg_llm is older than 0.3.0 (not yet ALTER EXTENSION
 * UPDATEd) has no llm_train_lineage: st->keeps_history is false there, and
 * write-backs add no history.
 */
extern void llm_train_state_read_history(LlmTrainState *st);

/* Keep the id of a llm_train_log row of a step taken on st, for the next write-back. */
extern void llm_train_state_note_log(LlmTrainState *st, int64 log_id);

/*
 * In the write-back's transaction, after its UPDATE (SPI connected): a row
 * of llm_train_lineage for st->version at st->step, built on st->lineage,
 * which becomes it; the noted llm_train_log rows are stamped with it.
 * The new weights, the row and the stamps commit together or not at all.
 */
extern void llm_train_state_record_write_back(LlmTrainState *st);

#endif							/* PG_LLM_TRAIN_STATE_H */
