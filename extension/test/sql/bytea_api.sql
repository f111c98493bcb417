-- The original pg_llm BYTEA API: raw little-endian float32 in, out.
SET extra_float_digits = 0;
\set SHOW_CONTEXT never
-- [1,2] @ [[3],[4]] = [11]
SELECT pg_llm_matmul(llm_bytea('[1,2]'), llm_bytea('[3,4]'), 1, 2, 1)::tensor;
SELECT pg_llm_add(llm_bytea('[1,2]'), llm_bytea('[10,20]'))::tensor;
SELECT pg_llm_gelu(llm_bytea('[0,10]'))::tensor;
SELECT round(((pg_llm_softmax(llm_bytea('[0,1.0986123]'))::tensor)::real[])[2]::numeric, 6);  -- 3/4
SELECT pg_llm_layernorm(llm_bytea('[1,3,5,5]'), llm_bytea('[1,1]'), llm_bytea('[0,0]'), 1e-12)::tensor;
SELECT round(pg_llm_cross_entropy(llm_bytea('[0,0,0,0]'), 3)::numeric, 6);
-- errors
SELECT pg_llm_matmul(llm_bytea('[1,2]'), llm_bytea('[3,4]'), 1, 3, 1);
SELECT pg_llm_add('\x000000'::bytea, llm_bytea('[1]'));
SELECT pg_llm_add(llm_bytea('[1,2]'), llm_bytea('[1,2,3]'));
SELECT pg_llm_cross_entropy(llm_bytea('[0,0]'), 2);
