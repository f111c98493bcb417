-- pg_llm: tensor operations.  Each is one kernel in extension/src/kernels/.

-- a @ b for 2-D tensors; the flags multiply by a^T and/or b^T instead.
CREATE FUNCTION llm_matmul(a tensor, b tensor,
                           transpose_a boolean DEFAULT false,
                           transpose_b boolean DEFAULT false) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_matmul_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- a + b and a * b; b may be a row ([C] over [T, C]): its shape must equal
-- the trailing dimensions of a's.
CREATE FUNCTION llm_add(a tensor, b tensor) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_add_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION llm_mul(a tensor, b tensor) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_mul_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION llm_scale(x tensor, s double precision) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_scale_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION llm_transpose(x tensor) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_transpose_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
-- One dimension may be -1: it is inferred.
CREATE FUNCTION llm_reshape(x tensor, shape int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_reshape_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
-- Rows start .. stop-1 of the first axis, 0-based like numpy's x[start:stop].
CREATE FUNCTION llm_slice(x tensor, start int, stop int) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_slice_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- GELU, tanh approximation (GPT-2's activation).
CREATE FUNCTION llm_gelu(x tensor) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_gelu_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
-- Softmax over the last axis; causal masks [..., Tq, Tk] scores so query i
-- sees keys 0 .. i + Tk - Tq.
CREATE FUNCTION llm_softmax(x tensor, causal boolean DEFAULT false) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_softmax_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION llm_layernorm(x tensor, gamma tensor, beta tensor, eps real DEFAULT 1e-5) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_layernorm_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Rows of w [vocab, dim] picked by token ids (0-based).
CREATE FUNCTION llm_embedding(w tensor, ids int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_embedding_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
-- Mean cross-entropy of logits [T, vocab] against one target per row
-- (-100 rows are ignored, as in PyTorch).
CREATE FUNCTION llm_cross_entropy(logits tensor, targets int[]) RETURNS real
    AS 'MODULE_PATHNAME', 'llm_cross_entropy_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Multi-head scaled dot-product attention: q [Tq, C], k and v [Tk, C].
CREATE FUNCTION llm_attention(q tensor, k tensor, v tensor, n_head int,
                              causal boolean DEFAULT true) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_attention_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
