/*
 * init.c -- tensors to start from: seeded normal samples and constants.
 *
 *   llm_randn(shape, std, seed)  values ~ Normal(0, std^2), reproducible
 *   llm_fill(shape, value)       every value the same
 *
 * llm_init() (sql/50_gpt2.sql) builds GPT-2's initialisation out of these.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"

#include "kernels/prng.h"
#include "tensor/tensor.h"

/*
 * llm_randn(shape int[], std double precision, seed bigint) -> tensor
 *
 * Box-Muller turns each pair of uniform numbers from the seeded generator
 * into two normal samples, written to consecutive elements.  The values
 * depend on the seed and the element count only.
 */
PG_FUNCTION_INFO_V1(llm_randn_sql);
Datum
llm_randn_sql(PG_FUNCTION_ARGS)
{
	int64		dims[LLM_MAX_NDIM];
	int			ndim = shape_from_array("llm_randn", PG_GETARG_ARRAYTYPE_P(0), dims);
	float8		std = PG_GETARG_FLOAT8(1);
	int64		seed = PG_GETARG_INT64(2);
	Tensor	   *t;
	int64		n;
	LlmRng		rng;

	if (!(std >= 0) || isinf(std))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_randn: std must be a finite number >= 0, got %g", std)));
	t = tensor_new(ndim, dims);
	n = tensor_numel(t);
	llm_rng_seed(&rng, (uint64) seed);
	for (int64 i = 0; i < n; i += 2)
	{
		double		z0,
					z1;

		if ((i & 0xFFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		llm_rng_normal_pair(&rng, &z0, &z1);
		t->data[i] = (float) (std * z0);
		if (i + 1 < n)
			t->data[i + 1] = (float) (std * z1);
		if (isinf(t->data[i]) || (i + 1 < n && isinf(t->data[i + 1])))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("llm_randn: value out of range: std %g draws samples beyond float32's range",
							std)));
	}
	PG_RETURN_TENSOR_P(t);
}

/* llm_fill(shape int[], value double precision) -> tensor */
PG_FUNCTION_INFO_V1(llm_fill_sql);
Datum
llm_fill_sql(PG_FUNCTION_ARGS)
{
	int64		dims[LLM_MAX_NDIM];
	int			ndim = shape_from_array("llm_fill", PG_GETARG_ARRAYTYPE_P(0), dims);
	float8		value8 = PG_GETARG_FLOAT8(1);
	float		value = (float) value8;
	Tensor	   *t;
	int64		n;

	if (isnan(value) || isinf(value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_fill: value must be a finite float32, got %g", value8)));
	t = tensor_new(ndim, dims);	/* zeroed */
	n = tensor_numel(t);
	if (value != 0)
		for (int64 i = 0; i < n; i++)
			t->data[i] = value;
	PG_RETURN_TENSOR_P(t);
}
