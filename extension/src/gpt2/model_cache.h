/*
 * model_cache.h -- a GPT-2 model's weights, decoded once per version from
 * llm_param (model_cache.c) into the weight store that every backend shares
 * (weight_store.h), and decoded anew when llm_model_config.version says
 * they changed.
 *
 *   const Gpt2Model *m = gpt2_model_get("gpt2-small");
 *
 * The parameters it decodes are gpt2/model.h's list, which SQL sees as
 * llm_param_shapes(model).
 */
#ifndef PG_LLM_GPT2_MODEL_CACHE_H
#define PG_LLM_GPT2_MODEL_CACHE_H

#include "postgres.h"

#include "gpt2/model.h"

/* ---- reading llm_model_config and llm_param (SPI connected) ------------- */

/*
 * The llm_model_config row of `model` (SPI must be connected); false when
 * there is none.  *relid is the table's OID, part of the cache key.
 */
extern bool gpt2_config_read(const char *model, Oid *relid, int64 *version,
							 Gpt2Config *cfg);

/* ERROR unless the config is sane and its parameters fit in memory. */
extern void gpt2_config_check(const char *model, const Gpt2Config *cfg);

/*
 * Copy one llm_param value (a `tensor` Datum, possibly toasted) into dst,
 * after checking its shape against `p`; big out-of-line values are read in
 * slices, never detoasted whole.  `column` ("data", "grad", "m", "v") names
 * the value in error messages.
 */
extern void gpt2_param_read(const char *model, const Gpt2ParamInfo *p, const char *column,
							Datum raw, float *dst);

/* ---- the cache ---------------------------------------------------------- */

/*
 * The weights of `model` at the version the caller's snapshot sees, if the
 * current user may read them (ERROR otherwise).  They stay valid, and
 * unchanged, as long as the current memory context lives: a streaming SRF
 * that calls this in its multi-call context keeps them across calls.  Never
 * write or free them.
 */
extern const Gpt2Model *gpt2_model_get(const char *model);

/* Error (22023) unless every id is in [0, vocab_size). */
extern void gpt2_check_tokens(const char *who, const Gpt2Model *m,
							  const int32 *ids, int n);

#endif							/* PG_LLM_GPT2_MODEL_CACHE_H */
