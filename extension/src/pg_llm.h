/*
 * pg_llm.h -- the settings of pg_llm.c that other parts read.
 *
 * The parts of the engine live in folders (see README.md beside this file):
 *   support/   PostgreSQL glue every part shares: errors, allocation, tables
 *   tensor/    the `tensor` type         ops/       SQL wrappers of the kernels
 *   autograd/  the op list, the tape,    gpt2/      the model: weights, forward,
 *              llm_backprop                         backward, the weight cache
 *   train/     AdamW, steps, the loop    io/        checkpoint files on the server
 *   tokenizer/ byte-level BPE            generate/  sampling, generation,
 *   kernels/   the math, in plain C:                streaming, beam search
 *              no PostgreSQL header
 */
#ifndef PG_LLM_H
#define PG_LLM_H

#include "postgres.h"

#include "support/support.h"	/* the helpers, for whoever includes pg_llm.h */

/* pg_llm.shared_cache_size, in MB: the cap of gpt2/weight_store.c. */
extern int	llm_shared_cache_mb;

/* pg_llm.inference_dtype: how gpt2/model_cache.c hands out weights for inference. */
typedef enum
{
	LLM_INFERENCE_FP32,
	LLM_INFERENCE_BF16			/* 2-D weights as bfloat16 (gpt2/model.h) */
} LlmInferenceDtype;

extern int	llm_inference_dtype;

/* pg_llm.decode_batching: generate/batch.c batches decode steps. */
extern bool llm_decode_batching;

/*
 * `model` if not NULL, else the setting pg_llm.default_model (ERROR 22023
 * when that is empty too).
 */
extern const char *llm_model_or_default(const char *who, const char *model);

#endif							/* PG_LLM_H */
