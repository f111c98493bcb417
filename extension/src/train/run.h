/*
 * run.h -- a training run: the settings of CALL llm_train (loop.c) and,
 * when it is named (run => 'name'), where it stands (run.c).
 *
 * A named run is recorded (llm_train_run) by its first call.  Its step i
 * (from 0) is the model's update number start_step + i + 1, whichever call
 * takes it: the learning rate is llm_lr_at(&schedule, i), the batch is drawn
 * by (seed, start_step + i), and AdamW continues from llm_param's m, v and
 * step.  So a run interrupted and continued by the same call again takes
 * exactly the steps it would have taken in one go.
 */
#ifndef PG_LLM_TRAIN_RUN_H
#define PG_LLM_TRAIN_RUN_H

#include "postgres.h"

#include "kernels/optim.h"
#include "train/state.h"

typedef struct LlmTrainRun
{
	char	   *model;
	char	   *name;			/* run => ..., or NULL: this call alone */
	int			steps;			/* the run's steps in all */
	int			batch_size;
	LlmLrSchedule schedule;
	LlmAdamW	hp;
	double		clip;			/* <= 0: none */
	int64		seed;
	int			grad_threads;
	int			optim_threads;
	int			save_every;
	int			notice_every;
	char	   *dtype;			/* 'fp32' or 'bf16' (checked by llm_train_state_set_dtype) */
	char	   *dataset;		/* llm_dataset.dataset to draw from (NULL: any) */
	char	   *split;			/* ... and its split */
	int64	   *ids;			/* llm_dataset ids of the split, ascending */
	int			n_ids;
} LlmTrainRun;

/*
 * How many of the run's steps are done, with the model's weights as st
 * holds them: 0 for a call without a name and for a new run, which is then
 * recorded in llm_train_run (SPI connected; commits with the caller's
 * transaction).  Sets st->run.  A known run's settings must be the ones it
 * was recorded with: ERROR 22023 naming each one that differs.  Its weights
 * must be where it left them (its start or one of its write-backs), or the
 * run complete: ERROR 55000 otherwise.
 */
extern int	llm_train_run_open(LlmTrainRun *run, LlmTrainState *st);

#endif							/* PG_LLM_TRAIN_RUN_H */
