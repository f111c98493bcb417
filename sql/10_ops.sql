-- pg_llm: tensor operations (extension/src/ops/ops.c; autograd/op_list.h lists them).
-- Each is one kernel in extension/src/kernels/.

CREATE FUNCTION llm_matmul(a tensor, b tensor,
                           transpose_a boolean DEFAULT false,
                           transpose_b boolean DEFAULT false) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_matmul_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_matmul(tensor, tensor, boolean, boolean) IS
    'a @ b for 2-D tensors [M,K] x [K,N] -> [M,N]; transpose_a / transpose_b use a^T or b^T instead';

CREATE FUNCTION llm_add(a tensor, b tensor) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_add_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_add(tensor, tensor) IS
    'a + b elementwise -> a''s shape; b has a''s shape or its trailing dimensions, e.g. a bias [C] added to every row of [T,C]';

CREATE FUNCTION llm_mul(a tensor, b tensor) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_mul_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_mul(tensor, tensor) IS
    'a * b elementwise (not a matmul) -> a''s shape; b has a''s shape or its trailing dimensions, e.g. [C] over [T,C]';

CREATE FUNCTION llm_scale(x tensor, s double precision) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_scale_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_scale(tensor, double precision) IS
    's * x for every element -> x''s shape; s must be a finite float32 value';

CREATE FUNCTION llm_transpose(x tensor) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_transpose_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_transpose(tensor) IS
    'the transpose of a 2-D tensor: [M,N] -> [N,M]';

CREATE FUNCTION llm_reshape(x tensor, shape int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_reshape_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_reshape(tensor, int[]) IS
    'the same values row-major under another shape of as many elements; one dimension may be -1 (inferred): [2,3] with {-1} -> [6]';

CREATE FUNCTION llm_slice(x tensor, start int, stop int) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_slice_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_slice(tensor, int, int) IS
    'rows start .. stop-1 of the first axis (0-based, numpy''s x[start:stop]): [N,...] -> [stop-start,...]; reads only those rows';

CREATE FUNCTION llm_gelu(x tensor) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_gelu_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_gelu(tensor) IS
    'GELU of every element, tanh form as in GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); same shape';

CREATE FUNCTION llm_softmax(x tensor, causal boolean DEFAULT false) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_softmax_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_softmax(tensor, boolean) IS
    'softmax over the last axis, same shape; causal: scores [..., Tq, Tk], query i keeps keys 0 .. i+Tk-Tq, the rest get 0';

CREATE FUNCTION llm_layernorm(x tensor, gamma tensor, beta tensor, eps real DEFAULT 1e-5) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_layernorm_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_layernorm(tensor, tensor, tensor, real) IS
    'LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta; x [..., C], gamma and beta [C]; same shape as x';

CREATE FUNCTION llm_embedding(w tensor, ids int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_embedding_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_embedding(tensor, int[]) IS
    'the rows of w [vocab, C] picked by n token ids (0-based) -> [n, C]';

CREATE FUNCTION llm_cross_entropy(logits tensor, targets int[]) RETURNS real
    AS 'MODULE_PATHNAME', 'llm_cross_entropy_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_cross_entropy(tensor, int[]) IS
    'mean cross-entropy of logits [T, vocab] against T target ids (0-based; rows with -100 are ignored, as in PyTorch) -> real';

CREATE FUNCTION llm_attention(q tensor, k tensor, v tensor, n_head int,
                              causal boolean DEFAULT true) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_attention_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_attention(tensor, tensor, tensor, int, boolean) IS
    'multi-head attention, softmax(q k^T / sqrt(C/n_head)) v per head: q [Tq,C], k and v [Tk,C] -> [Tq,C]; causal: query i sees keys 0 .. i+Tk-Tq';
