-- pg_llm: the original pg_llm BYTEA API, as thin wrappers over the tensor
-- functions.  A bytea here is raw little-endian float32 values.

CREATE FUNCTION pg_llm_matmul(a bytea, b bytea, m int, k int, n int) RETURNS bytea
    AS $$ SELECT llm_bytea(llm_matmul(llm_tensor(a, ARRAY[m, k]), llm_tensor(b, ARRAY[k, n]))) $$
    SET search_path = pg_catalog, @extschema@, pg_temp
    LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION pg_llm_matmul(bytea, bytea, int, int, int) IS
    'BYTEA API: a [m,k] @ b [k,n] -> [m,n], each as raw little-endian float32 values row-major';

CREATE FUNCTION pg_llm_add(a bytea, b bytea) RETURNS bytea
    AS $$ SELECT llm_bytea(llm_add(a::tensor, b::tensor)) $$
    SET search_path = pg_catalog, @extschema@, pg_temp
    LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION pg_llm_add(bytea, bytea) IS
    'BYTEA API: a + b elementwise over raw little-endian float32 values; a and b have the same length';

CREATE FUNCTION pg_llm_gelu(x bytea) RETURNS bytea
    AS $$ SELECT llm_bytea(llm_gelu(x::tensor)) $$
    SET search_path = pg_catalog, @extschema@, pg_temp
    LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION pg_llm_gelu(bytea) IS
    'BYTEA API: GELU (tanh form, as GPT-2) of every raw little-endian float32 value of x';

CREATE FUNCTION pg_llm_softmax(x bytea) RETURNS bytea
    AS $$ SELECT llm_bytea(llm_softmax(x::tensor)) $$
    SET search_path = pg_catalog, @extschema@, pg_temp
    LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION pg_llm_softmax(bytea) IS
    'BYTEA API: softmax over all the raw little-endian float32 values of x, taken as one row';

CREATE FUNCTION pg_llm_layernorm(x bytea, gamma bytea, beta bytea, eps float4) RETURNS bytea
    AS $$ SELECT llm_bytea(llm_layernorm(
              llm_reshape(x::tensor, ARRAY[-1, length(gamma) / 4]),
              gamma::tensor, beta::tensor, eps)) $$
    SET search_path = pg_catalog, @extschema@, pg_temp
    LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION pg_llm_layernorm(bytea, bytea, bytea, real) IS
    'BYTEA API: LayerNorm of each row of x (rows of length(gamma) / 4 float32 values) with gamma, beta [C] and eps';

CREATE FUNCTION pg_llm_cross_entropy(logits bytea, target int) RETURNS float4
    AS $$ SELECT llm_cross_entropy(llm_reshape(logits::tensor, ARRAY[1, -1]), ARRAY[target]) $$
    SET search_path = pg_catalog, @extschema@, pg_temp
    LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION pg_llm_cross_entropy(bytea, int) IS
    'BYTEA API: cross-entropy of one row of raw float32 logits [vocab] against one target id (0-based)';
