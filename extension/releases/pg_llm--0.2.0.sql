-- pg_llm 0.2.0, frozen: the SQL of sql/*.sql at commit 8b7071d, concatenated in name order.
-- What a learner may have installed; CREATE EXTENSION pg_llm VERSION '0.2.0' runs it.
-- Never edit: a change of the SQL goes into sql/ and the next upgrade script (releases/README.md).
-- pg_llm: the tensor type.
-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION pg_llm" to load this file. \quit

-- An n-dimensional float32 array (1 to 8 dimensions), row-major.
--   SELECT '[[1,2,3],[4,5,6]]'::tensor;
CREATE TYPE tensor;

CREATE FUNCTION tensor_in(cstring) RETURNS tensor
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor_in(cstring) IS
    'text input of tensor: nested lists such as ''[[1,2,3],[4,5,6]]'' give a [2,3] tensor (lists of a level have one length)';
CREATE FUNCTION tensor_out(tensor) RETURNS cstring
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor_out(tensor) IS
    'text output of tensor: one bracketed list per dimension, e.g. [[1,2,3],[4,5,6]] for a [2,3] tensor';
CREATE FUNCTION tensor_recv(internal) RETURNS tensor
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor_recv(internal) IS
    'binary input of tensor: int16 ndim, int16 dtype (0 = float32), int32 dims[ndim], then the float4 values row-major';
CREATE FUNCTION tensor_send(tensor) RETURNS bytea
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor_send(tensor) IS
    'binary output of tensor, in the format tensor_recv reads: int16 ndim, int16 dtype, int32 dims[ndim], float4 values';

-- Floats do not compress: store large values out of line, uncompressed.
CREATE TYPE tensor (
    INPUT = tensor_in,
    OUTPUT = tensor_out,
    RECEIVE = tensor_recv,
    SEND = tensor_send,
    INTERNALLENGTH = VARIABLE,
    ALIGNMENT = double,
    STORAGE = external
);

COMMENT ON TYPE tensor IS 'n-dimensional float32 array (1 to 8 dims), row-major';

-- real[] <-> tensor: the array's dimensions become the shape.
CREATE FUNCTION tensor(real[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_real_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor(real[]) IS
    'cast real[] -> tensor: the array''s dimensions become the shape, e.g. ''{{1,2},{3,4}}'' -> [2,2]; no NULL elements';
CREATE FUNCTION real_array(tensor) RETURNS real[]
    AS 'MODULE_PATHNAME', 'tensor_to_real_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION real_array(tensor) IS
    'cast tensor -> real[]: the same values, the shape becomes the array''s dimensions (at most 6, the limit of arrays)';
CREATE CAST (real[] AS tensor) WITH FUNCTION tensor(real[]) AS ASSIGNMENT;
CREATE CAST (tensor AS real[]) WITH FUNCTION real_array(tensor) AS ASSIGNMENT;
COMMENT ON CAST (real[] AS tensor) IS 'the array''s dimensions become the shape (function tensor(real[]))';
COMMENT ON CAST (tensor AS real[]) IS 'the shape becomes the array''s dimensions (function real_array(tensor))';

-- Raw little-endian float32 bytes <-> tensor (the original pg_llm BYTEA form).
CREATE FUNCTION tensor(bytea) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_bytea_flat' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor(bytea) IS
    'cast bytea -> tensor: raw little-endian float32 values (4 bytes each) -> a 1-D tensor [length / 4]';
CREATE FUNCTION llm_bytea(tensor) RETURNS bytea
    AS 'MODULE_PATHNAME', 'tensor_to_bytea_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_bytea(tensor) IS
    'cast tensor -> bytea: the values row-major as raw little-endian float32 (4 bytes each); the shape is dropped';
CREATE CAST (bytea AS tensor) WITH FUNCTION tensor(bytea);
CREATE CAST (tensor AS bytea) WITH FUNCTION llm_bytea(tensor);
COMMENT ON CAST (bytea AS tensor) IS 'raw little-endian float32 values -> a 1-D tensor (function tensor(bytea))';
COMMENT ON CAST (tensor AS bytea) IS 'the values as raw little-endian float32, shape dropped (function llm_bytea(tensor))';

-- Constructors with an explicit shape.
CREATE FUNCTION llm_tensor(vals real[], shape int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_real_array_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_tensor(real[], int[]) IS
    'a tensor of the given shape filled row-major with vals (read flat, whatever its dimensions); their count must equal the product of shape';
CREATE FUNCTION llm_tensor(raw bytea, shape int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_bytea_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_tensor(bytea, int[]) IS
    'a tensor of the given shape from raw little-endian float32 bytes, row-major; raw must hold 4 * product(shape) bytes';

CREATE FUNCTION llm_shape(tensor) RETURNS int[]
    AS 'MODULE_PATHNAME', 'tensor_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_shape(tensor) IS
    'the shape of a tensor as int[], e.g. {2,3} for [[1,2,3],[4,5,6]]; reads only the header of a stored value';

-- What the kernels run with: SIMD instruction set, threads, cores.
CREATE FUNCTION llm_info_text() RETURNS text
    AS 'MODULE_PATHNAME', 'llm_info' LANGUAGE C STABLE;
COMMENT ON FUNCTION llm_info_text() IS
    'llm_info() as JSON text: {"version", "simd", "threads", "cores"}';
CREATE FUNCTION llm_info() RETURNS jsonb
    SET search_path = pg_catalog, @extschema@, pg_temp
    AS 'SELECT llm_info_text()::jsonb' LANGUAGE SQL STABLE;
COMMENT ON FUNCTION llm_info() IS
    'what the kernels run with: version, simd (the best the CPU has, capped by pg_llm.simd), threads (pg_llm.threads), cores';
-- pg_llm: tensor operations.  Each is one kernel in extension/src/kernels/.

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
-- pg_llm: the model registry and its parameters.

-- ERROR 22004 naming the argument, for the functions that need every
-- argument (a NULL would otherwise surface as 'null value in column ...').
CREATE FUNCTION llm_require_arg(p_function text, p_argument text, p_is_null boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    IF p_is_null THEN
        RAISE EXCEPTION '%: argument "%" must not be NULL', p_function, p_argument
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
END $$;
COMMENT ON FUNCTION llm_require_arg(text, text, boolean) IS
'ERROR 22004 "<p_function>: argument "<p_argument>" must not be NULL" when p_is_null';

-- Every write to llm_param, and every change to a model's row, takes a fresh
-- number from this sequence into llm_model_config.version.  Sequences never
-- hand out a number twice, even across rollbacks, so (model, version) names
-- one set of weights exactly: the backend's decoded-weight cache is keyed by it.
CREATE SEQUENCE llm_param_version_seq;
COMMENT ON SEQUENCE llm_param_version_seq IS
    'the numbers llm_model_config.version takes: every write to llm_param draws a new one';

CREATE TABLE llm_model_config (
    model          text PRIMARY KEY,
    n_layer        int  NOT NULL CHECK (n_layer >= 1),
    n_head         int  NOT NULL CHECK (n_head >= 1),
    n_embd         int  NOT NULL CHECK (n_embd >= 1),
    n_positions    int  NOT NULL CHECK (n_positions >= 1),
    vocab_size     int  NOT NULL CHECK (vocab_size >= 1),
    layer_norm_eps real NOT NULL DEFAULT 1e-5 CHECK (layer_norm_eps > 0),
    n_inner        int  CHECK (n_inner >= 1),   -- MLP width; NULL means 4 * n_embd
    version        bigint NOT NULL DEFAULT nextval('llm_param_version_seq'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT heads_divide_width CHECK (n_head < 1 OR n_embd % n_head = 0)  -- (n_head >= 1 says why not)
);
COMMENT ON TABLE llm_model_config IS 'GPT-2 shapes, one row per model; version changes with every write to llm_param';
COMMENT ON COLUMN llm_model_config.model IS 'the model''s name, e.g. gpt2-small; llm_param.model refers to it';
COMMENT ON COLUMN llm_model_config.n_layer IS 'transformer blocks: parameters h.0.* .. h.<n_layer-1>.*';
COMMENT ON COLUMN llm_model_config.n_head IS 'attention heads per block; divides n_embd';
COMMENT ON COLUMN llm_model_config.n_embd IS 'width C of the residual stream (and of every token''s embedding)';
COMMENT ON COLUMN llm_model_config.n_positions IS 'longest sequence the model reads: the rows of wpe.weight';
COMMENT ON COLUMN llm_model_config.vocab_size IS 'number of token ids: the rows of wte.weight';
COMMENT ON COLUMN llm_model_config.layer_norm_eps IS 'the eps of every LayerNorm';
COMMENT ON COLUMN llm_model_config.n_inner IS 'width of the MLP''s hidden layer; NULL means 4 * n_embd';
COMMENT ON COLUMN llm_model_config.version IS
    'changes with every write to this model''s llm_param rows: the backend weight cache is keyed by it';
COMMENT ON COLUMN llm_model_config.created_at IS 'when the model was registered';

INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)
VALUES ('gpt2-small', 12, 12, 768, 1024, 50257);

-- The parameters GPT-2 has, with HuggingFace names and shapes (Conv1D
-- weights are [in, out]; lm_head is tied to wte and not listed).  The list
-- lives in C (extension/src/gpt2/model_cache.c), next to the weight cache
-- that reads it.
CREATE FUNCTION llm_param_shapes(p_model text)
RETURNS TABLE (name text, shape int[])
    AS 'MODULE_PATHNAME', 'llm_param_shapes_sql' LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION llm_param_shapes(text) IS
    'the (name, shape) of every parameter of a registered GPT-2 model: HF names, Conv1D weights [in, out], no lm_head (tied to wte)';

CREATE TABLE llm_param (
    model  text NOT NULL REFERENCES llm_model_config (model)
                ON DELETE CASCADE ON UPDATE CASCADE,
    name   text NOT NULL,
    shape  int[] NOT NULL,          -- filled in by llm_param_check()
    data   tensor NOT NULL,
    grad   tensor,
    m      tensor,                  -- AdamW first moment
    v      tensor,                  -- AdamW second moment
    step   int NOT NULL DEFAULT 0,  -- optimizer steps taken
    PRIMARY KEY (model, name)
);
COMMENT ON TABLE llm_param IS 'one row per named GPT-2 tensor (HuggingFace names), with gradient and AdamW state';
COMMENT ON COLUMN llm_param.model IS 'the model (llm_model_config.model) the parameter belongs to';
COMMENT ON COLUMN llm_param.name IS 'HuggingFace name without "transformer.", e.g. h.0.attn.c_attn.weight';
COMMENT ON COLUMN llm_param.shape IS 'the shape of data, grad, m and v: the row check fills it in (or checks it when given)';
COMMENT ON COLUMN llm_param.data IS 'the parameter''s values';
COMMENT ON COLUMN llm_param.grad IS 'gradient of the loss with respect to data, same shape; NULL when none was computed';
COMMENT ON COLUMN llm_param.m IS 'AdamW first moment (running mean of grad), same shape as data';
COMMENT ON COLUMN llm_param.v IS 'AdamW second moment (running mean of grad^2), same shape as data';
COMMENT ON COLUMN llm_param.step IS 'AdamW steps taken on this parameter';

-- Every row is checked against the model's shapes, whoever writes it
-- (gpt2/param_check.c), and its shape column filled in.  In C: a training
-- step's write-back sends the whole model through it, and it reads only
-- the tensors' headers and hands the row on uncopied.  (shape is not a
-- generated column for that reason: computing one makes the executor copy
-- every new value of the row.)
CREATE FUNCTION llm_param_check() RETURNS trigger
    AS 'MODULE_PATHNAME', 'llm_param_check' LANGUAGE C;
COMMENT ON FUNCTION llm_param_check() IS
    'trigger on llm_param, each row: refuse an unknown model, a name not in llm_param_shapes(model), or a data/grad/m/v of another shape; fill in shape';

CREATE TRIGGER llm_param_check BEFORE INSERT OR UPDATE ON llm_param
    FOR EACH ROW EXECUTE FUNCTION llm_param_check();

-- Bump the version of every model whose parameters a statement touched.
-- An UPDATE is seen through its old rows only: a NEW TABLE would hold a
-- copy of every new tensor (a training step's write-back rewrites the whole
-- model) just to read the model names, which the old rows have too.  A row
-- that moves to another model bumps that model in llm_param_bump_moved().
CREATE FUNCTION llm_param_bump_version() RETURNS trigger
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE llm_model_config SET version = nextval('llm_param_version_seq');
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE llm_model_config SET version = nextval('llm_param_version_seq')
        WHERE model IN (SELECT DISTINCT model FROM old_rows);
    ELSIF TG_OP = 'INSERT' THEN
        UPDATE llm_model_config SET version = nextval('llm_param_version_seq')
        WHERE model IN (SELECT DISTINCT model FROM new_rows);
    ELSE
        UPDATE llm_model_config SET version = nextval('llm_param_version_seq')
        WHERE model IN (SELECT DISTINCT model FROM old_rows);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION llm_param_bump_version() IS
    'trigger on llm_param, each statement: a new llm_model_config.version for every model it touched (TRUNCATE: all)';

CREATE FUNCTION llm_param_bump_moved() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
    UPDATE llm_model_config SET version = nextval('llm_param_version_seq') WHERE model = NEW.model;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION llm_param_bump_moved() IS
    'trigger on llm_param, each row whose model an UPDATE changed: a new version for the model it moved to';

CREATE TRIGGER llm_param_version_ins AFTER INSERT ON llm_param
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_param_bump_version();
CREATE TRIGGER llm_param_version_upd AFTER UPDATE ON llm_param
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_param_bump_version();
CREATE TRIGGER llm_param_version_moved AFTER UPDATE OF model ON llm_param
    FOR EACH ROW WHEN (OLD.model IS DISTINCT FROM NEW.model)
    EXECUTE FUNCTION llm_param_bump_moved();
CREATE TRIGGER llm_param_version_del AFTER DELETE ON llm_param
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_param_bump_version();
CREATE TRIGGER llm_param_version_trunc AFTER TRUNCATE ON llm_param
    FOR EACH STATEMENT EXECUTE FUNCTION llm_param_bump_version();

-- A model's row that changes gets a fresh version too, whatever the
-- statement set version to: backends that cached the model reload it with
-- its new settings (n_head, layer_norm_eps, ...), and no one can hand an old
-- version number back to new weights.
CREATE FUNCTION llm_model_config_new_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    NEW.version := nextval('llm_param_version_seq');
    RETURN NEW;
END $$;

CREATE TRIGGER llm_model_config_version BEFORE INSERT OR UPDATE ON llm_model_config
    FOR EACH ROW EXECUTE FUNCTION llm_model_config_new_version();
COMMENT ON FUNCTION llm_model_config_new_version() IS
'trigger: a new or changed llm_model_config row gets a fresh version, so cached weights reload';

-- A model with stored parameters keeps shapes that fit them: a change of
-- n_layer, n_embd, n_positions, vocab_size or n_inner is refused unless the
-- stored parameters are exactly what the new settings have.
CREATE FUNCTION llm_model_config_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    misfits text[];
    missing text[];
BEGIN
    IF (NEW.n_layer, NEW.n_embd, NEW.n_positions, NEW.vocab_size, coalesce(NEW.n_inner, 4 * NEW.n_embd))
       = (OLD.n_layer, OLD.n_embd, OLD.n_positions, OLD.vocab_size, coalesce(OLD.n_inner, 4 * OLD.n_embd))
       OR NOT EXISTS (SELECT 1 FROM llm_param p WHERE p.model = NEW.model) THEN
        RETURN NULL;
    END IF;
    -- (an AFTER trigger: llm_param_shapes() reads the new row)
    SELECT array_agg(CASE WHEN s.shape IS NULL
                          THEN format('"%s" is not a parameter of the new settings', p.name)
                          ELSE format('"%s" has shape %s, the new settings give it %s', p.name, p.shape, s.shape)
                     END ORDER BY p.name COLLATE "C")
    INTO misfits
    FROM llm_param p LEFT JOIN llm_param_shapes(NEW.model) s ON s.name = p.name
    WHERE p.model = NEW.model AND s.shape IS DISTINCT FROM p.shape;
    SELECT array_agg(s.name ORDER BY s.name COLLATE "C") INTO missing
    FROM llm_param_shapes(NEW.model) s
    WHERE NOT EXISTS (SELECT 1 FROM llm_param p WHERE p.model = NEW.model AND p.name = s.name);
    IF misfits IS NOT NULL OR missing IS NOT NULL THEN
        RAISE EXCEPTION 'llm_model_config: the new settings of model "%" do not fit its stored parameters: %',
            NEW.model,
            concat_ws('; ', array_to_string(misfits[1:5], '; ')
                            || CASE WHEN cardinality(misfits) > 5 THEN '; ...' ELSE '' END,
                      'missing ' || cardinality(missing) || ' parameter(s): '
                            || array_to_string(missing[1:5], ', ')
                            || CASE WHEN cardinality(missing) > 5 THEN ', ...' ELSE '' END)
            USING ERRCODE = 'data_exception',
                  HINT = 'Delete the model''s parameters first (DELETE FROM llm_param WHERE model = ...), '
                         'or register the new settings under another model name.';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER llm_model_config_check AFTER UPDATE ON llm_model_config
    FOR EACH ROW EXECUTE FUNCTION llm_model_config_check();
COMMENT ON FUNCTION llm_model_config_check() IS
'trigger: refuses new settings whose shapes do not fit the model''s stored parameters';

-- Error unless `model` has every parameter it should (used after imports).
CREATE FUNCTION llm_check_complete(p_model text) RETURNS void
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql AS $$
DECLARE
    missing text[];
BEGIN
    PERFORM llm_require_arg('llm_check_complete', 'p_model', p_model IS NULL);
    IF NOT EXISTS (SELECT 1 FROM llm_model_config WHERE model = p_model) THEN
        RAISE EXCEPTION 'unknown model "%"', p_model
            USING ERRCODE = 'undefined_object',
                  HINT = 'Models are registered in llm_model_config.';
    END IF;
    SELECT array_agg(s.name ORDER BY s.name) INTO missing
    FROM llm_param_shapes(p_model) s
    WHERE NOT EXISTS (SELECT 1 FROM llm_param p WHERE p.model = p_model AND p.name = s.name);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'model "%" is missing % parameter(s): %', p_model,
            cardinality(missing), array_to_string(missing[1:5], ', ')
            || CASE WHEN cardinality(missing) > 5 THEN ', ...' ELSE '' END
            USING ERRCODE = 'data_exception';
    END IF;
END $$;
COMMENT ON FUNCTION llm_check_complete(text) IS
    'raise an error unless the model is registered and llm_param has a row for each name of llm_param_shapes(model)';

-- One token's embedding row, read with a TOAST slice (not all of wte).
CREATE FUNCTION llm_embedding_row(p_model text, token_id int) RETURNS tensor
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE sql STABLE AS $$
    SELECT llm_reshape(llm_slice(data, token_id, token_id + 1), ARRAY[-1])
    FROM llm_param WHERE model = p_model AND name = 'wte.weight'
$$;
COMMENT ON FUNCTION llm_embedding_row(text, int) IS
    'row token_id (0-based) of the model''s wte.weight as a 1-D tensor [n_embd]; reads only that row from storage';
-- pg_llm: checkpoints in and out of llm_param.
--
--   SELECT llm_import_hf('/data/gpt2', 'gpt2');            -- a HuggingFace folder
--   SELECT pg_llm_import_safetensors('/data/x.safetensors', 'gpt2-small');
--   SELECT pg_llm_import_npz('/data/x.npz', 'gpt2-small');
--   SELECT llm_export_hf('gpt2', '/data/gpt2-tuned');       -- GPT2LMHeadModel.from_pretrained() loads it
--   SELECT * FROM llm_read_safetensors('/data/x.safetensors');   -- just look
--
-- The files are on the database server, so reading or writing them needs
-- what COPY FROM/TO a file needs: superuser, or the privileges of
-- pg_read_server_files / pg_write_server_files.  From another machine, use
-- pg_llm_lab.import_hf / export_hf (Python): they send the tensors over the
-- connection instead.
--
-- Names are HuggingFace's: "transformer." prefixes are removed, and the
-- attention-mask buffers (h.N.attn.bias, h.N.attn.masked_bias) and
-- lm_head.weight (tied to wte.weight) are skipped.

-- ---- the readers and writers (C, formats.c / safetensors.c / npz.c) ----------

CREATE FUNCTION llm_read_safetensors(path text)
RETURNS TABLE (name text, dtype text, shape int[], data tensor)
    AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_read_safetensors(text) IS
    'the tensors of a safetensors file on the server (F32, F16, BF16, F64; converted to float32)';

CREATE FUNCTION llm_read_npz(path text)
RETURNS TABLE (name text, dtype text, shape int[], data tensor)
    AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_read_npz(text) IS
    'the arrays of a NumPy .npz file on the server (np.savez or np.savez_compressed; float16/32/64)';

CREATE FUNCTION llm_read_text_file(path text) RETURNS text
    AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_read_text_file(text) IS 'the contents of a UTF-8 text file on the server';

-- Writers replace the file atomically (write a temporary file, then rename),
-- creating its directory if missing; they return the bytes written.
CREATE FUNCTION llm_write_text_file(path text, content text) RETURNS bigint
    AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_write_text_file(text, text) IS 'write a UTF-8 text file on the server';

CREATE FUNCTION llm_write_safetensors(path text, model text) RETURNS bigint
    AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_write_safetensors(text, text) IS
    'write the llm_param rows of a model as a safetensors file on the server';

-- ---- names ----------------------------------------------------------------------

-- The llm_param name of a tensor in a HuggingFace GPT-2 checkpoint, or NULL
-- for tensors that are not parameters we store.
--   'transformer.h.0.attn.c_attn.weight' -> 'h.0.attn.c_attn.weight'
--   'h.0.attn.bias' (the causal mask buffer) -> NULL
--   'lm_head.weight' (the same tensor as wte.weight) -> NULL
CREATE FUNCTION llm_hf_param_name(hf_name text) RETURNS text
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN n = 'lm_head.weight' THEN NULL
        WHEN n ~ '(^|\.)attn\.(bias|masked_bias)$' THEN NULL
        ELSE n
    END
    FROM (SELECT regexp_replace(hf_name, '^transformer\.', '') AS n) AS stripped
$$;
COMMENT ON FUNCTION llm_hf_param_name(text) IS
    'the llm_param name of a HF GPT-2 checkpoint tensor ("transformer." removed), or NULL for attn.bias, attn.masked_bias, lm_head.weight';

-- ---- importing ---------------------------------------------------------------------

CREATE FUNCTION llm_import_require_model(p_model text) RETURNS void
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM llm_require_arg('llm_import_require_model', 'p_model', p_model IS NULL);
    IF NOT EXISTS (SELECT 1 FROM llm_model_config c WHERE c.model = p_model) THEN
        RAISE EXCEPTION 'unknown model "%"', p_model
            USING ERRCODE = 'undefined_object',
                  HINT = 'Register its shapes first: INSERT INTO llm_model_config (model, n_layer, '
                         'n_head, n_embd, n_positions, vocab_size) VALUES (...); or import a '
                         'HuggingFace folder with llm_import_hf(dir, model), which reads config.json.';
    END IF;
END $$;
COMMENT ON FUNCTION llm_import_require_model(text) IS
    'raise an error, with a hint how to register it, unless the model has a row in llm_model_config';

-- Replace all parameters of p_model with the tensors of a file, checking
-- every name and shape.  A function runs as one statement: if anything
-- fails, the DELETE and the INSERTs are undone together and llm_param is
-- exactly as before.
CREATE FUNCTION llm_import_tensors(p_model text, p_path text, p_format text) RETURNS int
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql AS $$
DECLARE
    reader text := CASE p_format WHEN 'safetensors' THEN 'llm_read_safetensors'
                                 WHEN 'npz' THEN 'llm_read_npz' END;
    tensors refcursor;
    t record;
    expected int[];
    imported int := 0;
BEGIN
    PERFORM llm_require_arg('llm_import_tensors', 'p_model', p_model IS NULL);
    PERFORM llm_require_arg('llm_import_tensors', 'p_path', p_path IS NULL);
    PERFORM llm_require_arg('llm_import_tensors', 'p_format', p_format IS NULL);
    IF reader IS NULL THEN
        RAISE EXCEPTION 'llm_import_tensors: unknown format "%"', p_format
            USING ERRCODE = 'invalid_parameter_value', HINT = 'The formats are safetensors and npz.';
    END IF;
    PERFORM llm_import_require_model(p_model);

    DELETE FROM llm_param p WHERE p.model = p_model;
    -- An explicit cursor fetches one tensor at a time (a FOR loop would
    -- fetch ten: ten big tensors in memory).
    OPEN tensors FOR EXECUTE format('SELECT f.name AS file_name, llm_hf_param_name(f.name) AS name, '
                                    'f.shape, f.data FROM %I($1) AS f', reader) USING p_path;
    LOOP
        FETCH tensors INTO t;
        EXIT WHEN NOT FOUND;
        CONTINUE WHEN t.name IS NULL;       -- a buffer, or the tied lm_head

        SELECT s.shape INTO expected FROM llm_param_shapes(p_model) s WHERE s.name = t.name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'tensor "%" in "%" is not a parameter of GPT-2 model "%"',
                t.file_name, p_path, p_model
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'SELECT * FROM llm_param_shapes(model) lists the names.';
        END IF;
        IF t.shape <> expected THEN
            RAISE EXCEPTION 'tensor "%" in "%" has shape %, but model "%" expects %',
                t.file_name, p_path, t.shape, p_model, expected
                USING ERRCODE = 'data_exception',
                      HINT = 'The shapes come from the model''s row in llm_model_config: '
                             'is the file for another model size?';
        END IF;
        IF EXISTS (SELECT 1 FROM llm_param p WHERE p.model = p_model AND p.name = t.name) THEN
            RAISE EXCEPTION '"%" holds parameter "%" twice (the last as "%")',
                p_path, t.name, t.file_name
                USING ERRCODE = 'duplicate_object';
        END IF;

        INSERT INTO llm_param (model, name, data) VALUES (p_model, t.name, t.data);
        imported := imported + 1;
    END LOOP;
    CLOSE tensors;

    PERFORM llm_check_complete(p_model);    -- every parameter is there
    RETURN imported;
END $$;
COMMENT ON FUNCTION llm_import_tensors(text, text, text) IS
    'replace all parameters of p_model with the tensors of server file p_path (p_format safetensors or npz), all or nothing; returns the count';

CREATE FUNCTION pg_llm_import_safetensors(path text, model text) RETURNS int
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM llm_require_arg('pg_llm_import_safetensors', 'path', path IS NULL);
    PERFORM llm_require_arg('pg_llm_import_safetensors', 'model', model IS NULL);
    RETURN llm_import_tensors(model, path, 'safetensors');
END $$;
COMMENT ON FUNCTION pg_llm_import_safetensors(text, text) IS
    'replace the parameters of a registered model with a safetensors file''s; returns the tensors imported';

CREATE FUNCTION pg_llm_import_npz(path text, model text) RETURNS int
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM llm_require_arg('pg_llm_import_npz', 'path', path IS NULL);
    PERFORM llm_require_arg('pg_llm_import_npz', 'model', model IS NULL);
    RETURN llm_import_tensors(model, path, 'npz');
END $$;
COMMENT ON FUNCTION pg_llm_import_npz(text, text) IS
    'replace the parameters of a registered model with a .npz file''s; returns the tensors imported';

-- ---- HuggingFace configs ------------------------------------------------------------

-- An integer setting of a config.json, or p_default when absent or null.
CREATE FUNCTION llm_hf_config_int(p_config jsonb, p_key text, p_default int) RETURNS int
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb := p_config -> p_key;
BEGIN
    IF v IS NULL OR v = 'null' THEN
        RETURN p_default;
    END IF;
    IF jsonb_typeof(v) <> 'number' OR v::text !~ '^[0-9]{1,9}$' THEN
        RAISE EXCEPTION 'config.json: "%" must be a non-negative integer, got %', p_key, v
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v::text::int;
END $$;
COMMENT ON FUNCTION llm_hf_config_int(jsonb, text, int) IS
    'the integer p_key of a config.json object, or p_default when absent or null; an error for anything but a non-negative integer';

-- Register p_model in llm_model_config from a HuggingFace GPT-2 config
-- (the contents of config.json), or check that its row agrees.  Configs
-- that ask for math we do not compute are refused rather than run wrongly.
CREATE FUNCTION llm_register_hf_config(p_model text, p_config jsonb) RETURNS void
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql AS $$
DECLARE
    cfg jsonb := p_config;
    n_layer int;
    n_head int;
    n_embd int;
    n_positions int;
    vocab_size int;
    n_inner int;
    eps real;
    registered llm_model_config;
    differences text;
BEGIN
    PERFORM llm_require_arg('llm_register_hf_config', 'p_model', p_model IS NULL);
    PERFORM llm_require_arg('llm_register_hf_config', 'p_config', p_config IS NULL);
    IF jsonb_typeof(cfg) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'config.json must hold a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(cfg ->> 'model_type', 'gpt2') <> 'gpt2' THEN
        RAISE EXCEPTION 'config.json: model_type is "%", but pg_llm computes GPT-2 only', cfg ->> 'model_type'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF coalesce(cfg ->> 'activation_function', 'gelu_new') NOT IN ('gelu_new', 'gelu_pytorch_tanh') THEN
        RAISE EXCEPTION 'config.json: activation_function "%" is not supported', cfg ->> 'activation_function'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'pg_llm computes the tanh GELU of GPT-2 (gelu_new).';
    END IF;
    IF cfg -> 'scale_attn_by_inverse_layer_idx' = 'true' OR cfg -> 'reorder_and_upcast_attn' = 'true'
       OR cfg -> 'scale_attn_weights' = 'false' OR cfg -> 'add_cross_attention' = 'true' THEN
        RAISE EXCEPTION 'config.json: pg_llm computes the attention of GPT-2 only'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn and '
                           'add_cross_attention must be false, scale_attn_weights true.';
    END IF;
    IF cfg -> 'tie_word_embeddings' = 'false' THEN
        RAISE EXCEPTION 'config.json: tie_word_embeddings is false, but pg_llm ties lm_head to wte'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF cfg ? 'layer_norm_epsilon' AND jsonb_typeof(cfg -> 'layer_norm_epsilon') <> 'number' THEN
        RAISE EXCEPTION 'config.json: layer_norm_epsilon must be a number, got %', cfg -> 'layer_norm_epsilon'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- HuggingFace's GPT2Config defaults for anything left out.
    n_layer := llm_hf_config_int(cfg, 'n_layer', 12);
    n_head := llm_hf_config_int(cfg, 'n_head', 12);
    n_embd := llm_hf_config_int(cfg, 'n_embd', 768);
    n_positions := llm_hf_config_int(cfg, 'n_positions', llm_hf_config_int(cfg, 'n_ctx', 1024));
    vocab_size := llm_hf_config_int(cfg, 'vocab_size', 50257);
    n_inner := llm_hf_config_int(cfg, 'n_inner', NULL);     -- NULL: 4 * n_embd
    eps := coalesce((cfg ->> 'layer_norm_epsilon')::real, 1e-5);

    SELECT * INTO registered FROM llm_model_config c WHERE c.model = p_model;
    IF NOT FOUND THEN
        INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size,
                                      layer_norm_eps, n_inner)
        VALUES (p_model, n_layer, n_head, n_embd, n_positions, vocab_size, eps, n_inner);
        RETURN;
    END IF;

    differences := concat_ws(', ',
        CASE WHEN registered.n_layer <> n_layer THEN format('n_layer %s vs %s', registered.n_layer, n_layer) END,
        CASE WHEN registered.n_head <> n_head THEN format('n_head %s vs %s', registered.n_head, n_head) END,
        CASE WHEN registered.n_embd <> n_embd THEN format('n_embd %s vs %s', registered.n_embd, n_embd) END,
        CASE WHEN registered.n_positions <> n_positions
             THEN format('n_positions %s vs %s', registered.n_positions, n_positions) END,
        CASE WHEN registered.vocab_size <> vocab_size
             THEN format('vocab_size %s vs %s', registered.vocab_size, vocab_size) END,
        CASE WHEN coalesce(registered.n_inner, 4 * registered.n_embd) <> coalesce(n_inner, 4 * n_embd)
             THEN format('n_inner %s vs %s', coalesce(registered.n_inner, 4 * registered.n_embd),
                         coalesce(n_inner, 4 * n_embd)) END,
        CASE WHEN registered.layer_norm_eps <> eps
             THEN format('layer_norm_eps %s vs %s', registered.layer_norm_eps, eps) END);
    IF differences <> '' THEN
        RAISE EXCEPTION 'model "%" is registered with other settings than its config: %',
            p_model, differences
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Import under another model name, or DELETE FROM llm_model_config WHERE model = ... first.';
    END IF;
END $$;
COMMENT ON FUNCTION llm_register_hf_config(text, jsonb) IS
    'register a model in llm_model_config from a HF GPT-2 config.json (jsonb), or check that its row agrees; refuses what GPT-2 here does not compute';

-- The config.json of a model, as GPT2LMHeadModel.from_pretrained() expects.
CREATE FUNCTION llm_hf_config(p_model text) RETURNS jsonb
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c llm_model_config;
BEGIN
    PERFORM llm_require_arg('llm_hf_config', 'p_model', p_model IS NULL);
    PERFORM llm_import_require_model(p_model);
    SELECT * INTO c FROM llm_model_config m WHERE m.model = p_model;
    RETURN jsonb_build_object(
        'architectures', jsonb_build_array('GPT2LMHeadModel'),
        'model_type', 'gpt2',
        'n_layer', c.n_layer,
        'n_head', c.n_head,
        'n_embd', c.n_embd,
        'n_positions', c.n_positions,
        'n_ctx', c.n_positions,
        'vocab_size', c.vocab_size,
        'n_inner', c.n_inner,                   -- null: 4 * n_embd
        'layer_norm_epsilon', c.layer_norm_eps,
        'activation_function', 'gelu_new',
        'scale_attn_weights', true,
        'scale_attn_by_inverse_layer_idx', false,
        'reorder_and_upcast_attn', false,
        'tie_word_embeddings', true,
        'attn_pdrop', 0.1, 'embd_pdrop', 0.1, 'resid_pdrop', 0.1,
        'summary_first_dropout', 0.1,
        'initializer_range', 0.02,
        'use_cache', true,
        'bos_token_id', least(50256, c.vocab_size - 1),    -- <|endoftext|>
        'eos_token_id', least(50256, c.vocab_size - 1));
END $$;
COMMENT ON FUNCTION llm_hf_config(text) IS
    'the config.json (jsonb) of a registered model, as GPT2LMHeadModel.from_pretrained expects it';

-- Import a HuggingFace checkpoint folder: register config.json (or check it
-- against the model's row), then import model.safetensors.
CREATE FUNCTION llm_import_hf(dir text, model text) RETURNS int
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql AS $$
DECLARE
    config_path text := rtrim(dir, '/') || '/config.json';
    config_text text;
    config jsonb;
    problem text;
    detail text;
BEGIN
    PERFORM llm_require_arg('llm_import_hf', 'dir', dir IS NULL);
    PERFORM llm_require_arg('llm_import_hf', 'model', model IS NULL);
    config_text := llm_read_text_file(config_path);
    BEGIN
        config := config_text::jsonb;
    EXCEPTION WHEN data_exception THEN      -- the JSON parser's errors do not name the file
        GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
        RAISE EXCEPTION 'llm_import_hf: file "%" is not valid JSON: %', config_path,
            problem || coalesce(' (' || nullif(detail, '') || ')', '')
            USING ERRCODE = SQLSTATE;
    END;
    PERFORM llm_register_hf_config(model, config);
    RETURN llm_import_tensors(model, rtrim(dir, '/') || '/model.safetensors', 'safetensors');
END $$;
COMMENT ON FUNCTION llm_import_hf(text, text) IS
    'import a HuggingFace GPT-2 folder on the server (config.json + model.safetensors); returns the tensors imported';

-- ---- exporting ---------------------------------------------------------------------

CREATE FUNCTION pg_llm_export_safetensors(model text, path text) RETURNS bigint
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM llm_require_arg('pg_llm_export_safetensors', 'model', model IS NULL);
    PERFORM llm_require_arg('pg_llm_export_safetensors', 'path', path IS NULL);
    PERFORM llm_check_complete(model);      -- never write half a model
    RETURN llm_write_safetensors(path, model);
END $$;
COMMENT ON FUNCTION pg_llm_export_safetensors(text, text) IS
    'write a model''s parameters as a safetensors file on the server; returns the bytes written';

-- A folder that GPT2LMHeadModel.from_pretrained(dir) loads: config.json and
-- model.safetensors (lm_head.weight left out: it is tied to wte.weight);
-- and, when the model has a tokenizer of its name (sql/60_text.sql),
-- vocab.json and merges.txt, which GPT2TokenizerFast.from_pretrained(dir) loads.
CREATE FUNCTION llm_export_hf(model text, dir text) RETURNS bigint
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
BEGIN
    PERFORM llm_require_arg('llm_export_hf', 'model', model IS NULL);
    PERFORM llm_require_arg('llm_export_hf', 'dir', dir IS NULL);
    written := pg_llm_export_safetensors(model, rtrim(dir, '/') || '/model.safetensors');
    IF EXISTS (SELECT 1 FROM llm_bpe_vocab v WHERE v.model = llm_export_hf.model) THEN
        written := written + llm_export_tokenizer(model, dir);
    END IF;
    RETURN written + llm_write_text_file(rtrim(dir, '/') || '/config.json',
                                         jsonb_pretty(llm_hf_config(model)) || E'\n');
END $$;
COMMENT ON FUNCTION llm_export_hf(text, text) IS
    'write a model as a HuggingFace folder on the server (config.json + model.safetensors, and vocab.json + '
    'merges.txt when it has a tokenizer); returns the bytes written';
-- pg_llm: GPT-2 inference (extension/src/gpt2/: model_cache.c, forward.c)
-- and initialisation (extension/src/ops/init.c).  Generation is in
-- 70_generation.sql.
--
-- The functions that read llm_param are STABLE: they see the weights of
-- the calling statement's snapshot.  The weights are decoded once into
-- backend memory and reused while llm_model_config.version is unchanged.
-- They are PARALLEL RESTRICTED so that a parallel worker never decodes its
-- own copy of the weights.
--
-- Real-valued arguments are double precision (not real): Python drivers
-- send floats as double precision, and double does not cast to real
-- implicitly, so `real` parameters would not match a call from psycopg.

-- ---- tensors to start from ---------------------------------------------

CREATE FUNCTION llm_randn(shape int[], std double precision, seed bigint) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_randn_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_randn(int[], double precision, bigint) IS
'a tensor of the given shape with Normal(0, std^2) values; the same seed gives the same values';

CREATE FUNCTION llm_fill(shape int[], value double precision) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_fill_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_fill(int[], double precision) IS
'a tensor of the given shape with every value equal to value';

-- ---- inference ------------------------------------------------------------

CREATE FUNCTION llm_logits(model text, tokens int[], last_only boolean DEFAULT false)
RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_logits_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_logits(text, int[], boolean) IS
'GPT-2 logits [T, vocab]: row i (0-based) scores the token that follows the first i+1 tokens; '
'last_only returns just the last row, [1, vocab]';

CREATE FUNCTION llm_loss(model text, tokens int[], targets int[]) RETURNS real
    AS 'MODULE_PATHNAME', 'llm_loss_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_loss(text, int[], int[]) IS
'mean cross-entropy of the logits at each position against targets (same length as tokens, -100 = ignore). '
'For next-token loss pass targets = tokens[2:] || -100, which is what HF computes from labels = input_ids';

-- The backend's weight cache: which model it holds, the version, its size,
-- and how many times this backend has decoded weights from llm_param.
CREATE FUNCTION llm_model_cache(OUT model text, OUT version bigint, OUT bytes bigint,
                                OUT loads bigint)
    AS 'MODULE_PATHNAME', 'llm_model_cache_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_model_cache() IS
'the model whose weights this backend has cached (model, version, bytes) and how many loads it did';

CREATE FUNCTION llm_model_cache_clear() RETURNS void
    AS 'MODULE_PATHNAME', 'llm_model_cache_clear_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_model_cache_clear() IS
'free the weights this backend has cached (they reload on the next use)';

-- ---- GPT-2's initialisation ---------------------------------------------------

-- The std GPT-2 (and HF's _init_weights) gives a parameter, or NULL for the
-- ones that start constant: biases 0, LayerNorm weights 1.  Residual
-- projections (c_proj) are scaled by 1/sqrt(2 * n_layer) so that the
-- residual stream's variance does not grow with depth.
CREATE FUNCTION llm_init_std(name text, n_layer int) RETURNS double precision
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN name LIKE '%.bias' THEN NULL
        WHEN name ~ '(^|\.)ln_(1|2|f)\.weight$' THEN NULL
        WHEN name ~ '\.c_proj\.weight$' THEN 0.02 / sqrt(2.0 * n_layer)
        ELSE 0.02
    END::double precision
$$;
COMMENT ON FUNCTION llm_init_std(text, int) IS
'the std llm_init draws parameter `name` with (NULL: a constant, 0 for biases and 1 for LayerNorm weights)';

CREATE FUNCTION llm_init(model text, seed int) RETURNS void
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n_layer int;
    total bigint;           -- values in the whole model
    done bigint := 0;
    reported int := 0;      -- tenths of the values reported so far
    started timestamptz := clock_timestamp();
    s record;
BEGIN
    PERFORM llm_require_arg('llm_init', 'model', llm_init.model IS NULL);
    PERFORM llm_require_arg('llm_init', 'seed', llm_init.seed IS NULL);
    SELECT c.n_layer INTO n_layer FROM llm_model_config c WHERE c.model = llm_init.model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown model "%"', llm_init.model
            USING ERRCODE = 'undefined_object',
                  HINT = 'Models are registered in llm_model_config.';
    END IF;
    SELECT sum(v.numel) INTO total
    FROM llm_param_shapes(llm_init.model) p,
         LATERAL (SELECT coalesce(round(exp(sum(ln(d)))), 0)::bigint AS numel FROM unnest(p.shape) d) v;

    -- Replace every row: grad, m, v and step start over too.
    DELETE FROM llm_param p WHERE p.model = llm_init.model;

    -- Tensor number i (in llm_param_shapes order) gets the seed
    -- seed * 2^20 + i, so each tensor has its own stream and the whole
    -- model is reproducible from `seed`.  One INSERT per tensor: a cancel
    -- is seen between them, and a model of 10M values or more (seconds of
    -- work) reports each tenth done as a NOTICE; smaller ones say nothing.
    FOR s IN SELECT * FROM llm_param_shapes(llm_init.model) WITH ORDINALITY AS t(name, shape, ordinal)
    LOOP
        INSERT INTO llm_param (model, name, data)
        VALUES (llm_init.model, s.name,
                CASE
                    WHEN llm_init_std(s.name, n_layer) IS NOT NULL
                        THEN llm_randn(s.shape, llm_init_std(s.name, n_layer),
                                       llm_init.seed::bigint * 1048576 + s.ordinal)
                    WHEN s.name LIKE '%.bias' THEN llm_fill(s.shape, 0)
                    ELSE llm_fill(s.shape, 1)
                END);
        done := done + (SELECT coalesce(round(exp(sum(ln(d)))), 0)::bigint FROM unnest(s.shape) d);
        IF total >= 10000000 AND done * 10 / total > reported THEN
            reported := done * 10 / total;
            RAISE NOTICE 'llm_init "%": % %% (% of % values), % s', llm_init.model, reported * 10,
                done, total, round(extract(epoch FROM clock_timestamp() - started)::numeric, 1);
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION llm_init(text, int) IS
'replace the model''s parameters with GPT-2''s initialisation: weights Normal(0, 0.02), c_proj weights '
'Normal(0, 0.02/sqrt(2 n_layer)), biases 0, LayerNorm weights 1; reproducible from seed; a NOTICE per tenth '
'done for models of 10M values or more';
-- pg_llm: text.  GPT-2's byte-level BPE tokenizer (extension/src/text/).
--
--   SELECT pg_llm_load_bpe('/data/gpt2/vocab.json', '/data/gpt2/merges.txt', 'gpt2');
--   SELECT llm_bpe_train('shakespeare', 'SELECT line FROM play', 4096);   -- or learn one
--   SELECT llm_encode('Hello world!', 'gpt2');                -- {15496,995,0}
--   SELECT llm_decode(ARRAY[15496, 995, 0], 'gpt2');          -- Hello world!
--   SELECT * FROM llm_tokenize('Hello world!', 'gpt2');       -- a row per token
--
-- A tokenizer is named like a model (llm_export_hf writes the model's
-- tokenizer beside its weights), but needs no row in llm_model_config.
-- Its vocabulary and merges are rows: learners can query, join and change
-- them.  Encoding reads them once into backend memory and reuses them while
-- llm_tokenizer.version is unchanged; every write to llm_bpe_vocab or
-- llm_bpe_merges bumps it (statement triggers), as llm_param does the
-- model's version.
--
-- Special tokens: <|endoftext|> is plain text unless allow_special => true
-- (then it is its own id, 50256 in GPT-2), as in HF tokenizers' BPE
-- pipeline and tiktoken's encode_ordinary; text from users cannot smuggle
-- in a control token by accident.  GPT2TokenizerFast and tiktoken's
-- encode(allowed_special="all") are the allow_special => true behaviour.
-- Special tokens are the vocabulary's tokens that no merge makes.

-- Every write to llm_bpe_vocab or llm_bpe_merges takes a fresh number from
-- this sequence into llm_tokenizer.version (never handed out twice).
CREATE SEQUENCE llm_tokenizer_version_seq;
COMMENT ON SEQUENCE llm_tokenizer_version_seq IS
'the numbers llm_tokenizer.version takes: each write to a tokenizer''s rows takes a fresh one';

CREATE TABLE llm_tokenizer (
    model      text PRIMARY KEY,
    version    bigint NOT NULL DEFAULT nextval('llm_tokenizer_version_seq'),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE llm_tokenizer IS
'one row per BPE tokenizer (named like its model); version changes with every write to its vocab or merges';
COMMENT ON COLUMN llm_tokenizer.model IS 'the tokenizer''s name: the model it serves, e.g. gpt2-small';
COMMENT ON COLUMN llm_tokenizer.version IS
    'changes with every write to this tokenizer''s vocab or merges: the backend tokenizer cache is keyed by it';
COMMENT ON COLUMN llm_tokenizer.created_at IS 'when the tokenizer was first loaded or trained';

CREATE FUNCTION llm_bpe_token_bytes(token text) RETURNS bytea
    AS 'MODULE_PATHNAME', 'llm_bpe_token_bytes_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_bpe_token_bytes(text) IS
'the bytes a byte-level BPE token stands for: each character of GPT-2''s byte alphabet is one byte '
'(''Ġthe'' -> '' the''); other characters (in added tokens) stand for their UTF-8';

CREATE FUNCTION llm_bpe_bytes_token(bytes bytea) RETURNS text
    AS 'MODULE_PATHNAME', 'llm_bpe_bytes_token_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_bpe_bytes_token(bytea) IS
'the byte-level token text of some bytes, one alphabet character per byte ('' the'' -> ''Ġthe'')';

CREATE TABLE llm_bpe_vocab (
    model  text NOT NULL REFERENCES llm_tokenizer (model) ON DELETE CASCADE ON UPDATE CASCADE,
    token  text NOT NULL CHECK (token <> ''),
    id     int  NOT NULL CHECK (id >= 0),
    bytes  bytea GENERATED ALWAYS AS (llm_bpe_token_bytes(token)) STORED,
    PRIMARY KEY (model, id),
    UNIQUE (model, token)
);
COMMENT ON TABLE llm_bpe_vocab IS
'a BPE tokenizer''s vocabulary, vocab.json as rows: token text (byte-level alphabet), id, and the bytes it stands for';
COMMENT ON COLUMN llm_bpe_vocab.model IS 'the tokenizer (llm_tokenizer.model)';
COMMENT ON COLUMN llm_bpe_vocab.token IS 'the token as vocab.json spells it, in GPT-2''s byte alphabet (''Ġthe'' is " the")';
COMMENT ON COLUMN llm_bpe_vocab.id IS 'the token id: a row of wte.weight';
COMMENT ON COLUMN llm_bpe_vocab.bytes IS 'the bytes the token stands for (computed from token)';

CREATE TABLE llm_bpe_merges (
    model   text NOT NULL REFERENCES llm_tokenizer (model) ON DELETE CASCADE ON UPDATE CASCADE,
    rank    int  NOT NULL CHECK (rank >= 0),
    "left"  text NOT NULL CHECK ("left" <> ''),
    "right" text NOT NULL CHECK ("right" <> ''),
    PRIMARY KEY (model, rank),
    UNIQUE (model, "left", "right")
);
COMMENT ON TABLE llm_bpe_merges IS
'a BPE tokenizer''s merges, merges.txt as rows: the pair "left" "right" joins into one token; lower rank merges first';
COMMENT ON COLUMN llm_bpe_merges.model IS 'the tokenizer (llm_tokenizer.model)';
COMMENT ON COLUMN llm_bpe_merges.rank IS 'the merge''s priority: 0 merges first (line order of merges.txt)';
COMMENT ON COLUMN llm_bpe_merges."left" IS 'the first token of the pair';
COMMENT ON COLUMN llm_bpe_merges."right" IS 'the second token of the pair';

-- Bump the version of every tokenizer whose rows a statement touched.
CREATE FUNCTION llm_tokenizer_bump_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE llm_tokenizer SET version = nextval('llm_tokenizer_version_seq');
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE llm_tokenizer SET version = nextval('llm_tokenizer_version_seq')
        WHERE model IN (SELECT DISTINCT model FROM old_rows);
    ELSIF TG_OP = 'INSERT' THEN
        UPDATE llm_tokenizer SET version = nextval('llm_tokenizer_version_seq')
        WHERE model IN (SELECT DISTINCT model FROM new_rows);
    ELSE
        UPDATE llm_tokenizer SET version = nextval('llm_tokenizer_version_seq')
        WHERE model IN (SELECT model FROM new_rows UNION SELECT model FROM old_rows);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION llm_tokenizer_bump_version() IS
'trigger: a write to llm_bpe_vocab or llm_bpe_merges gives the tokenizer a new version (the backend caches reload)';

CREATE TRIGGER llm_bpe_vocab_version_ins AFTER INSERT ON llm_bpe_vocab
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_vocab_version_upd AFTER UPDATE ON llm_bpe_vocab
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_vocab_version_del AFTER DELETE ON llm_bpe_vocab
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_vocab_version_trunc AFTER TRUNCATE ON llm_bpe_vocab
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_merges_version_ins AFTER INSERT ON llm_bpe_merges
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_merges_version_upd AFTER UPDATE ON llm_bpe_merges
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_merges_version_del AFTER DELETE ON llm_bpe_merges
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_merges_version_trunc AFTER TRUNCATE ON llm_bpe_merges
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();

-- ---- loading GPT-2's files (server side) -------------------------------------

CREATE FUNCTION pg_llm_load_bpe_vocab(path text, model text) RETURNS int
    AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_load_bpe_vocab(text, text) IS
'replace a tokenizer''s vocabulary with a vocab.json file on the server ({"token": id}); returns the tokens loaded';

CREATE FUNCTION pg_llm_load_bpe_merges(path text, model text) RETURNS int
    AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_load_bpe_merges(text, text) IS
'replace a tokenizer''s merges with a merges.txt file on the server ("left right" per line); returns the merges loaded';

-- ---- encoding and decoding -------------------------------------------------------

CREATE FUNCTION llm_encode(input text, model text, allow_special boolean DEFAULT false) RETURNS int[]
    AS 'MODULE_PATHNAME', 'llm_encode_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_encode(text, text, boolean) IS
'the token ids of a text (GPT-2''s byte-level BPE); allow_special => true reads <|endoftext|> in the text '
'as the special token, else it is plain text';

CREATE FUNCTION llm_decode(ids int[], model text) RETURNS text
    AS 'MODULE_PATHNAME', 'llm_decode_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_decode(int[], text) IS
'the text of token ids; bytes that are not valid UTF-8 (a character cut between tokens) and NUL become U+FFFD';

CREATE FUNCTION llm_decode_bytes(ids int[], model text) RETURNS bytea
    AS 'MODULE_PATHNAME', 'llm_decode_bytes_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_decode_bytes(int[], text) IS 'the bytes of token ids, exactly';

CREATE FUNCTION llm_decode_stream(ids int[], model text) RETURNS text[]
    AS 'MODULE_PATHNAME', 'llm_decode_stream_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_decode_stream(int[], text) IS
'what a streaming decoder emits after each token: only whole characters (a character split over tokens '
'comes out with its last token); the concatenation is llm_decode(ids, model)';

CREATE FUNCTION llm_pretokenize(input text) RETURNS text[]
    AS 'MODULE_PATHNAME', 'llm_pretokenize_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_pretokenize(text) IS
'the pieces GPT-2''s pre-tokenizer cuts a text into before BPE (the matches of '
'''s|''t|''re|''ve|''m|''ll|''d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)';

CREATE FUNCTION llm_tokenize(input text, model text, allow_special boolean DEFAULT false)
RETURNS TABLE (pos int, id int, token text, bytes bytea)
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    SELECT t.pos::int, t.id, v.token, v.bytes
    FROM unnest(llm_encode(input, model, allow_special)) WITH ORDINALITY AS t(id, pos)
    JOIN llm_bpe_vocab v ON v.model = llm_tokenize.model AND v.id = t.id
    ORDER BY t.pos
$$;
COMMENT ON FUNCTION llm_tokenize(text, text, boolean) IS
'a text''s tokens as rows: position (from 1), id, token text (byte-level alphabet) and the bytes it stands for';

CREATE FUNCTION llm_tokenizer_info(model text, OUT vocab_size int, OUT merges int, OUT eot_id int,
                                   OUT special_tokens text[], OUT version bigint)
    AS 'MODULE_PATHNAME', 'llm_tokenizer_info_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_tokenizer_info(text) IS
'a tokenizer''s size, merges, <|endoftext|> id and special tokens; loading it checks that vocab and merges agree';

CREATE FUNCTION llm_tokenizer_cache(OUT model text, OUT version bigint, OUT vocab_size int, OUT merges int,
                                    OUT cached_pieces int, OUT loads bigint)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_tokenizer_cache_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_tokenizer_cache() IS
'the tokenizers this backend has cached (version, size, pieces in its encode cache), and how many loads it did';

CREATE FUNCTION llm_tokenizer_cache_clear() RETURNS void
    AS 'MODULE_PATHNAME', 'llm_tokenizer_cache_clear_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_tokenizer_cache_clear() IS 'free the tokenizers this backend has cached';

-- Both files at once, checked against each other: all or nothing.
CREATE FUNCTION pg_llm_load_bpe(vocab_path text, merges_path text, model text) RETURNS int
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM pg_llm_load_bpe_vocab(vocab_path, model);
    PERFORM pg_llm_load_bpe_merges(merges_path, model);
    RETURN (llm_tokenizer_info(model)).vocab_size;     -- errors if they do not fit
END $$;
COMMENT ON FUNCTION pg_llm_load_bpe(text, text, text) IS
'load a tokenizer from vocab.json and merges.txt on the server, checking they belong together; returns the vocabulary size';

-- ---- training ---------------------------------------------------------------------

CREATE FUNCTION llm_bpe_train(model text, corpus_query text, vocab_size int) RETURNS int
    AS 'MODULE_PATHNAME', 'llm_bpe_train_query' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_bpe_train(text, text, int) IS
'learn a byte-level BPE tokenizer of vocab_size tokens (256 bytes, merges, <|endoftext|> last) from the texts '
'corpus_query returns (one text column), as HF''s BpeTrainer would; replaces the model''s vocab and merges';

CREATE FUNCTION llm_bpe_train(model text, corpus text[], vocab_size int) RETURNS int
    AS 'MODULE_PATHNAME', 'llm_bpe_train_array' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_bpe_train(text, text[], int) IS
'learn a byte-level BPE tokenizer of vocab_size tokens from an array of texts (see the corpus_query form)';

-- ---- writing the files -----------------------------------------------------------

-- vocab.json and merges.txt of a tokenizer, as HuggingFace writes them.
CREATE FUNCTION llm_bpe_vocab_json(model text) RETURNS text
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    SELECT json_object_agg(v.token, v.id ORDER BY v.id)::text
    FROM llm_bpe_vocab v WHERE v.model = llm_bpe_vocab_json.model
$$;
COMMENT ON FUNCTION llm_bpe_vocab_json(text) IS 'a tokenizer''s vocabulary as the text of a vocab.json';

CREATE FUNCTION llm_bpe_merges_txt(model text) RETURNS text
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    SELECT E'#version: 0.2\n' || coalesce(string_agg(m."left" || ' ' || m."right" || E'\n', '' ORDER BY m.rank), '')
    FROM llm_bpe_merges m WHERE m.model = llm_bpe_merges_txt.model
$$;
COMMENT ON FUNCTION llm_bpe_merges_txt(text) IS 'a tokenizer''s merges as the text of a merges.txt';

-- Write dir/vocab.json and dir/merges.txt on the server; returns the bytes written.
CREATE FUNCTION llm_export_tokenizer(model text, dir text) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM llm_tokenizer_info(model);      -- it exists, and is consistent
    RETURN llm_write_text_file(rtrim(dir, '/') || '/vocab.json', llm_bpe_vocab_json(model))
         + llm_write_text_file(rtrim(dir, '/') || '/merges.txt', llm_bpe_merges_txt(model));
END $$;
COMMENT ON FUNCTION llm_export_tokenizer(text, text) IS
'write a tokenizer''s vocab.json and merges.txt into a folder on the server; returns the bytes written';
-- pg_llm: text generation (extension/src/text/: sampling.c, generate.c,
-- stream.c, beam_search.c).
--
-- Sampling follows HuggingFace's generate(): repetition_penalty, then
-- temperature (0 = greedy), then top_k (0 = off), then top_p (1 = off), then
-- a draw from a generator seeded by `seed` (NULL = a random seed).  A fixed
-- seed gives the same tokens every time, at any pg_llm.threads.
--
-- The functions that generate are VOLATILE (a NULL seed draws a new one) and
-- PARALLEL RESTRICTED (a parallel worker must not decode its own copy of
-- the weights).

CREATE FUNCTION llm_sampling_probs(logits tensor,
                                   temperature double precision DEFAULT 1.0,
                                   top_k int DEFAULT 0,
                                   top_p double precision DEFAULT 1.0,
                                   repetition_penalty double precision DEFAULT 1.0,
                                   previous int[] DEFAULT NULL)
RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_sampling_probs_sql' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION llm_sampling_probs(tensor, double precision, int, double precision, double precision, int[]) IS
'the probabilities the next token is drawn with, for each row of logits ([vocab] or [rows, vocab]): '
'repetition_penalty on the ids in previous, then temperature (0 = greedy: 1 for the argmax), top_k (0 = off), '
'top_p (1 = off) as HuggingFace''s logits processors; 0 for the tokens filtered out';

-- ---- token ids in, token ids out ------------------------------------------------

CREATE FUNCTION llm_generate_tokens(model text, prompt int[], max_new_tokens int,
                                    temperature double precision DEFAULT 1.0,
                                    top_k int DEFAULT 0,
                                    top_p double precision DEFAULT 1.0,
                                    seed bigint DEFAULT NULL,
                                    stop_token int DEFAULT NULL,
                                    stop_ids int[] DEFAULT NULL,
                                    repetition_penalty double precision DEFAULT 1.0)
RETURNS int[]
    AS 'MODULE_PATHNAME', 'llm_generate_tokens_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_generate_tokens(text, int[], int, double precision, int, double precision, bigint, int, int[], double precision) IS
'the max_new_tokens tokens GPT-2 writes after prompt (only the new ones). temperature 0 = greedy; '
'else repetition_penalty, softmax(logits/temperature), top_k (0 = off), top_p (1 = off), then a draw from a '
'generator seeded by seed (NULL = random). Stops after stop_token or any of stop_ids (included in the result)';

-- Streams: call in the select list through a cursor, one FETCH per token:
--   BEGIN;
--   DECLARE gen NO SCROLL CURSOR FOR
--       SELECT (r).* FROM (SELECT llm_generate_stream_tokens('m', ARRAY[1,2], 20) AS r) AS s;
--   FETCH 1 FROM gen;   -- until is_complete
--   COMMIT;
-- In FROM (SELECT * FROM llm_generate_stream_tokens(...)) the rows come all
-- at the end.
CREATE FUNCTION llm_generate_stream_tokens(model text, prompt int[], max_tokens int,
                                           temperature double precision DEFAULT 1.0,
                                           top_k int DEFAULT 0,
                                           top_p double precision DEFAULT 1.0,
                                           seed bigint DEFAULT NULL,
                                           stop_ids int[] DEFAULT NULL,
                                           repetition_penalty double precision DEFAULT 1.0,
                                           OUT step int, OUT token_id int, OUT is_complete boolean)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_generate_stream_tokens_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED
    ROWS 64;
COMMENT ON FUNCTION llm_generate_stream_tokens(text, int[], int, double precision, int, double precision, bigint, int[], double precision) IS
'llm_generate_tokens one row per token (step from 1, token_id, is_complete on the last row), each computed '
'when fetched: call it in the select list through a cursor (FETCH 1) to receive tokens while the model runs';

CREATE FUNCTION llm_beam_search_tokens(model text, prompt int[], beam_width int, max_tokens int,
                                       length_penalty double precision DEFAULT 1.0,
                                       early_stopping text DEFAULT 'false',
                                       stop_ids int[] DEFAULT NULL,
                                       num_return int DEFAULT NULL,
                                       repetition_penalty double precision DEFAULT 1.0,
                                       OUT rank int, OUT score double precision, OUT tokens int[])
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_beam_search_tokens_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED
    ROWS 4;
COMMENT ON FUNCTION llm_beam_search_tokens(text, int[], int, int, double precision, text, int[], int, double precision) IS
'beam search as HuggingFace''s generate(num_beams=beam_width, do_sample=False): the num_return (default '
'beam_width) best hypotheses, rank 1 first, score = sum of log-probabilities / length^length_penalty, tokens '
'= the new ones (a stop id included). early_stopping: ''false'' (HF''s default), ''true'' or ''never''';

-- ---- text in, text out (the model's tokenizer: llm_bpe_vocab/llm_bpe_merges of the same name) ----
--
-- model NULL (or left out) is the setting pg_llm.default_model.  The
-- prompt is encoded as llm_encode does (<|endoftext|> in it is plain text);
-- an empty prompt starts from <|endoftext|>.  A prompt longer than the context leaves room for
-- max_tokens by dropping its oldest tokens, with a NOTICE.  Generation ends
-- after max_tokens, at a stop id (NULL stop_ids: <|endoftext|>; '{}': none)
-- or at the first of the stop strings; neither is part of the text.

CREATE FUNCTION llm_default_model() RETURNS text
    AS 'MODULE_PATHNAME', 'llm_default_model_sql' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION llm_default_model() IS
'the model llm_generate, llm_generate_stream and llm_beam_search use when none is named: the setting '
'pg_llm.default_model (an error if empty)';

CREATE FUNCTION llm_generate(prompt text, max_tokens int DEFAULT 64,
                             temperature double precision DEFAULT 1.0,
                             top_k int DEFAULT 0,
                             top_p double precision DEFAULT 1.0,
                             model text DEFAULT NULL,
                             seed bigint DEFAULT NULL,
                             stop text[] DEFAULT NULL,
                             stop_ids int[] DEFAULT NULL,
                             repetition_penalty double precision DEFAULT 1.0)
RETURNS text
    AS 'MODULE_PATHNAME', 'llm_generate_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_generate(text, int, double precision, int, double precision, text, bigint, text[], int[], double precision) IS
'the text GPT-2 writes after prompt: at most max_tokens tokens, sampled as llm_generate_tokens (temperature 0 = '
'greedy); model NULL = pg_llm.default_model; ends at a stop id (default <|endoftext|>) or stop string, '
'which are left out; a fixed seed gives the same text every time';

-- Streams as llm_generate_stream_tokens does (select list + cursor):
--   BEGIN;
--   DECLARE gen NO SCROLL CURSOR FOR
--       SELECT (r).* FROM (SELECT llm_generate_stream('Once upon a time', 40, 0.8, 40, 0.95) AS r) AS s;
--   FETCH 1 FROM gen;   -- one token a FETCH, until is_complete
--   COMMIT;
CREATE FUNCTION llm_generate_stream(prompt text, max_tokens int DEFAULT 64,
                                    temperature double precision DEFAULT 1.0,
                                    top_k int DEFAULT 0,
                                    top_p double precision DEFAULT 1.0,
                                    model text DEFAULT NULL,
                                    seed bigint DEFAULT NULL,
                                    stop text[] DEFAULT NULL,
                                    stop_ids int[] DEFAULT NULL,
                                    repetition_penalty double precision DEFAULT 1.0,
                                    OUT step int, OUT token_id int, OUT token text, OUT text text,
                                    OUT is_complete boolean)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_generate_stream_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED
    ROWS 64;
COMMENT ON FUNCTION llm_generate_stream(text, int, double precision, int, double precision, text, bigint, text[], int[], double precision) IS
'llm_generate one row per token: step (from 1), token_id, token (the text it adds: complete UTF-8 '
'characters only, '''' while one is split), text (all so far), is_complete (the last row). Rows reach the '
'client as they are made when called in the select list through a cursor (FETCH 1)';

CREATE FUNCTION llm_beam_search(prompt text, beam_width int, max_tokens int,
                                model text DEFAULT NULL,
                                length_penalty double precision DEFAULT 1.0,
                                early_stopping text DEFAULT 'false',
                                stop_ids int[] DEFAULT NULL,
                                num_return int DEFAULT NULL,
                                repetition_penalty double precision DEFAULT 1.0,
                                OUT rank int, OUT score double precision, OUT tokens int[], OUT text text)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_beam_search_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED
    ROWS 4;
COMMENT ON FUNCTION llm_beam_search(text, int, int, text, double precision, text, int[], int, double precision) IS
'llm_beam_search_tokens from a text prompt: the best hypotheses (rank 1 first) with their score, new tokens '
'and text (without the stop id, by default <|endoftext|>); model NULL = pg_llm.default_model';
-- pg_llm: the autograd tape (extension/src/autograd/).
--
-- SELECT llm_autograd_mode('full') makes every tensor op, and llm_loss /
-- llm_logits, record itself.  At the end of each statement the session's
-- tape is written to llm_tape (one row per op) and llm_tensor_rt (one row
-- per tensor), so any session can query, join and plot it.  llm_backprop()
-- then fills llm_tensor_rt.grad, and llm_accumulate_grads(model) adds the
-- gradients of the parameters into llm_param.grad.

-- The mode is a setting of the session (pg_llm.autograd_mode), not a table
-- row: the ops read it from a C variable, so with mode off they pay one
-- comparison and no catalog lookup; each session records its own tape.
-- (Before the session has loaded the library the setting does not exist
-- yet, and no op can have recorded: that reads as off.)
CREATE VIEW llm_autograd_mode AS
    SELECT coalesce(current_setting('pg_llm.autograd_mode', true), 'off') AS mode;
COMMENT ON VIEW llm_autograd_mode IS
    'this session''s recording mode (one row): off, meta or full; set it with SELECT llm_autograd_mode(mode)';
COMMENT ON COLUMN llm_autograd_mode.mode IS
    'off: ops record nothing; meta: each op records op, inputs, output, shape, attributes; full: also every value, which llm_backprop() needs';

CREATE FUNCTION llm_autograd_mode(mode text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM llm_require_arg('llm_autograd_mode', 'mode', mode IS NULL);
    IF mode NOT IN ('off', 'meta', 'full') THEN
        RAISE EXCEPTION 'llm_autograd_mode: unknown mode "%"', mode
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The modes are off, meta and full.';
    END IF;
    PERFORM set_config('pg_llm.autograd_mode', mode, false);
    -- A parallel worker's ops would record on a tape that dies with it.
    IF mode = 'off' THEN
        RESET max_parallel_workers_per_gather;
    ELSE
        PERFORM set_config('max_parallel_workers_per_gather', '0', false);
    END IF;
    RETURN mode;
END $$;
COMMENT ON FUNCTION llm_autograd_mode(text) IS
    'set this session''s recording mode: off, meta (ops and shapes) or full (also values, for llm_backprop); returns it. '
    'Recording covers the SQL ops, llm_logits/llm_loss and each training step (its batch''s forward). '
    'While recording, parallel query is off for the session (a worker''s tape would be lost)';

CREATE TABLE llm_tensor_rt (
    id          int PRIMARY KEY,
    shape       int[] NOT NULL,
    data        tensor,
    grad        tensor,
    param_name  text,
    produced_by int
);
ALTER TABLE llm_tensor_rt ALTER COLUMN data SET STORAGE EXTERNAL,
                          ALTER COLUMN grad SET STORAGE EXTERNAL;
COMMENT ON TABLE llm_tensor_rt IS
    'the tensors of the last recorded computation (runtime tensors), one row each. An op''s tensor argument is '
    'matched by value (shape and bytes) to the latest tensor of the tape that had it: equal tensors are one node, '
    'and a value seen for the first time is a new leaf';
COMMENT ON COLUMN llm_tensor_rt.id IS 'the tensor''s id: llm_tape.inputs and llm_tape.output refer to it';
COMMENT ON COLUMN llm_tensor_rt.shape IS 'the tensor''s shape';
COMMENT ON COLUMN llm_tensor_rt.data IS 'its values (mode full; NULL in mode meta)';
COMMENT ON COLUMN llm_tensor_rt.grad IS 'd(root)/d(this tensor) after llm_backprop(); NULL before, or when the root does not depend on it';
COMMENT ON COLUMN llm_tensor_rt.param_name IS
    'for a leaf that is a parameter: its llm_param.name (GPT-2''s llm_loss names its weights; llm_tensor_rt_leaf names others)';
COMMENT ON COLUMN llm_tensor_rt.produced_by IS 'the llm_tape.id of the op whose output this is; NULL for a leaf';

CREATE TABLE llm_tape (
    id      int PRIMARY KEY,
    op      text NOT NULL,
    inputs  int[] NOT NULL,
    output  int NOT NULL,
    shape   int[] NOT NULL,
    attrs   jsonb NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE llm_tape IS
    'the ops of the last recorded computation in the order they ran, one row each; llm_backprop() walks it backwards';
COMMENT ON COLUMN llm_tape.id IS 'position on the tape: 1 is the first op';
COMMENT ON COLUMN llm_tape.op IS 'the op, named as its SQL function (llm_attention_qkv: GPT-2''s attention over its fused [T, 3C] q, k, v)';
COMMENT ON COLUMN llm_tape.inputs IS 'the llm_tensor_rt ids of its tensor arguments, in argument order';
COMMENT ON COLUMN llm_tape.output IS 'the llm_tensor_rt id of its result (a loss is a tensor of shape {1})';
COMMENT ON COLUMN llm_tape.shape IS 'the shape of its result';
COMMENT ON COLUMN llm_tape.attrs IS 'its other arguments: transposes, causal, n_head, eps, scale, slice bounds, token ids, targets';

CREATE FUNCTION llm_tensor_rt_leaf(t tensor, param_name text DEFAULT NULL) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_tensor_rt_leaf_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_tensor_rt_leaf(tensor, text) IS
    't unchanged; while recording, t becomes a new leaf of the tape named param_name (e.g. a llm_param.name), '
    'which the ops that take t afterwards link to and llm_accumulate_grads finds';

CREATE FUNCTION llm_backprop(root int DEFAULT NULL, seed tensor DEFAULT NULL) RETURNS int
    AS 'MODULE_PATHNAME', 'llm_backprop_sql' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_backprop(int, tensor) IS
    'reverse mode over the tape (recorded in mode full): d(root)/d(every tensor) into llm_tensor_rt.grad. '
    'root: a llm_tensor_rt.id, default the last op''s output; it must be a scalar unless seed (d(loss)/d(root), '
    'the root''s shape) is given. Returns how many tensors got a gradient';

CREATE FUNCTION llm_accumulate_grads(model text) RETURNS int
    AS 'MODULE_PATHNAME', 'llm_accumulate_grads_sql' LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_accumulate_grads(text) IS
    'llm_param.grad += the tape''s gradient of every leaf whose param_name is a parameter of model (NULL grad counts as 0); '
    'returns how many parameters it updated';

CREATE FUNCTION llm_zero_grad(model text) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    n int;
BEGIN
    PERFORM llm_require_arg('llm_zero_grad', 'model', model IS NULL);
    UPDATE llm_param p SET grad = NULL WHERE p.model = llm_zero_grad.model AND p.grad IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION llm_zero_grad(text) IS
    'forget the gradients of model''s parameters (llm_param.grad = NULL, which llm_accumulate_grads reads as 0); returns how many it cleared';

CREATE FUNCTION llm_prune_autograd_state() RETURNS void
    AS 'MODULE_PATHNAME', 'llm_prune_autograd_state_sql' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_prune_autograd_state() IS
    'forget this session''s tape and empty llm_tape and llm_tensor_rt';
-- pg_llm: training -- the data, the logs, the optimizer and checkpoints
-- (extension/src/train/: state.c, optimizer.c; kernels/adamw.c, optim.c).
--
--   SELECT llm_dataset_from_tokens(tokens, 64);               -- blocks of 64 tokens
--   SELECT llm_adamw_step('lab', lr => 6e-4, max_grad_norm => 1.0);  -- from llm_param.grad
--   SELECT llm_lr(step, 6e-4, 100, 5000, 6e-5);               -- warmup + cosine
--   SELECT llm_checkpoint_save('lab', 'before the long run');
--   SELECT llm_checkpoint_load('lab', 3);
--
-- An optimizer step keeps the weights, gradients and AdamW moments of the
-- whole model in backend memory and writes them back to llm_param in one
-- UPDATE: a step is all or nothing.

-- ---- the data -------------------------------------------------------------------

CREATE TABLE llm_dataset (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tokens  int[] NOT NULL,
    target  int[] NOT NULL,
    split   text NOT NULL DEFAULT 'train',
    CONSTRAINT llm_dataset_one_row_of_tokens CHECK (array_ndims(tokens) = 1 AND array_ndims(target) = 1),
    CONSTRAINT llm_dataset_aligned CHECK (cardinality(tokens) = cardinality(target)),
    CONSTRAINT llm_dataset_token_ids CHECK (0 <= ALL (tokens) AND -100 <= ALL (target))
);
COMMENT ON TABLE llm_dataset IS
'training examples: a block of token ids and the ids each position should predict (-100: ignored)';
COMMENT ON COLUMN llm_dataset.id IS 'the example''s number; llm_train_log.batch lists them';
COMMENT ON COLUMN llm_dataset.tokens IS 'the input token ids, a block of the text';
COMMENT ON COLUMN llm_dataset.target IS 'the next token after each input position (-100: no loss there)';
COMMENT ON COLUMN llm_dataset.split IS 'train, val, ... : which examples a run trains or evaluates on';
COMMENT ON SEQUENCE llm_dataset_id_seq IS 'numbers the llm_dataset rows (identity of llm_dataset.id)';
CREATE INDEX llm_dataset_split ON llm_dataset (split, id);

CREATE FUNCTION llm_dataset_from_tokens(tokens int[], block_size int, stride int DEFAULT NULL,
                                        split text DEFAULT 'train',
                                        val_fraction double precision DEFAULT 0)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    t int[];
    n int;
    n_val int;
    step int := coalesce(stride, block_size);
    part record;
    inserted int;
    total int := 0;
BEGIN
    PERFORM llm_require_arg('llm_dataset_from_tokens', 'tokens', tokens IS NULL);
    PERFORM llm_require_arg('llm_dataset_from_tokens', 'block_size', block_size IS NULL);
    PERFORM llm_require_arg('llm_dataset_from_tokens', 'split', split IS NULL);
    PERFORM llm_require_arg('llm_dataset_from_tokens', 'val_fraction', val_fraction IS NULL);
    IF array_ndims(tokens) IS DISTINCT FROM 1 OR array_position(tokens, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'llm_dataset_from_tokens: tokens must be a one-dimensional array without NULLs'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF block_size < 1 OR step < 1 THEN
        RAISE EXCEPTION 'llm_dataset_from_tokens: block_size and stride must be >= 1, got % and %',
            block_size, step
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT (val_fraction >= 0 AND val_fraction < 1) THEN
        RAISE EXCEPTION 'llm_dataset_from_tokens: val_fraction must be in [0, 1), got %', val_fraction
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    t := tokens[array_lower(tokens, 1):array_upper(tokens, 1)];    -- numbered from 1
    n := cardinality(t);
    -- The last val_fraction of the stream is split 'val' (as nanoGPT's
    -- 90/10): the two splits never share a block.
    n_val := floor(n * val_fraction)::int;

    FOR part IN SELECT * FROM (VALUES (split, t[1 : n - n_val]), ('val', t[n - n_val + 1 : n])) AS p(name, ids)
                WHERE cardinality(p.ids) > 0 OR p.name = split
    LOOP
        IF block_size > cardinality(part.ids) - 1 THEN
            RAISE EXCEPTION 'llm_dataset_from_tokens: % tokens are too few for one block of % (split %)',
                cardinality(part.ids), block_size, part.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'A block of block_size tokens needs block_size + 1: the targets are the tokens shifted by one.';
        END IF;
        INSERT INTO llm_dataset (tokens, target, split)
        SELECT part.ids[s + 1 : s + block_size], part.ids[s + 2 : s + block_size + 1], part.name
        FROM generate_series(0, cardinality(part.ids) - block_size - 1, step) AS s
        ORDER BY s;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        total := total + inserted;
    END LOOP;
    RETURN total;
END $$;
COMMENT ON FUNCTION llm_dataset_from_tokens(int[], int, int, text, double precision) IS
'cut a token stream into llm_dataset rows: blocks of block_size tokens every stride tokens (default: '
'block_size, no overlap), target = the same block shifted by one token; the last val_fraction of the '
'tokens go to split ''val''; returns the rows added';

-- ---- the logs --------------------------------------------------------------------

CREATE TABLE llm_train_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model        text NOT NULL REFERENCES llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    step         int NOT NULL,
    loss         real,
    lr           double precision NOT NULL,
    grad_norm    real,
    tokens_per_s double precision,
    batch        bigint[],
    weight_decay double precision NOT NULL,
    beta1        double precision NOT NULL,
    beta2        double precision NOT NULL,
    eps          double precision NOT NULL,
    clip         double precision,
    tokens       int[],
    targets      int[],
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE llm_train_log IS
'one row per optimizer step: how it went (loss, grad_norm) and what replays it (batch and settings)';
COMMENT ON COLUMN llm_train_log.id IS 'order of the rows; a step number repeats after a checkpoint is loaded';
COMMENT ON COLUMN llm_train_log.model IS 'the model that took the step';
COMMENT ON COLUMN llm_train_log.step IS 'the optimizer steps the model had taken after this one (llm_param.step)';
COMMENT ON COLUMN llm_train_log.loss IS 'the mean cross-entropy of the batch before the step (NULL: computed elsewhere)';
COMMENT ON COLUMN llm_train_log.lr IS 'the learning rate of the step';
COMMENT ON COLUMN llm_train_log.grad_norm IS 'the global L2 norm of the gradients before clipping';
COMMENT ON COLUMN llm_train_log.tokens_per_s IS 'training throughput of the step (NULL: not measured)';
COMMENT ON COLUMN llm_train_log.batch IS 'the llm_dataset ids of the batch';
COMMENT ON COLUMN llm_train_log.weight_decay IS 'AdamW weight decay (on the tensors with 2 dimensions)';
COMMENT ON COLUMN llm_train_log.beta1 IS 'AdamW beta1';
COMMENT ON COLUMN llm_train_log.beta2 IS 'AdamW beta2';
COMMENT ON COLUMN llm_train_log.eps IS 'AdamW eps';
COMMENT ON COLUMN llm_train_log.clip IS 'the max_norm gradients were clipped to (NULL: no clipping)';
COMMENT ON COLUMN llm_train_log.tokens IS
'the batch''s input ids [B][T] when they were passed to llm_train_step (NULL: see batch)';
COMMENT ON COLUMN llm_train_log.targets IS 'the batch''s targets [B][T], with tokens';
COMMENT ON COLUMN llm_train_log.created_at IS 'when the step was logged';
COMMENT ON SEQUENCE llm_train_log_id_seq IS 'numbers the llm_train_log rows (identity of llm_train_log.id)';
CREATE INDEX llm_train_log_model_step ON llm_train_log (model, step);

CREATE TABLE llm_grad_stats (
    model        text NOT NULL REFERENCES llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    step         int NOT NULL,
    name         text NOT NULL,
    grad_norm    real,
    data_norm    real,
    update_ratio real
);
COMMENT ON TABLE llm_grad_stats IS
'per parameter and optimizer step: how big the gradient, the weights and the update were';
COMMENT ON COLUMN llm_grad_stats.model IS 'the model';
COMMENT ON COLUMN llm_grad_stats.step IS 'the optimizer steps taken after this one (as llm_train_log.step)';
COMMENT ON COLUMN llm_grad_stats.name IS 'the parameter (llm_param.name)';
COMMENT ON COLUMN llm_grad_stats.grad_norm IS 'L2 norm of its gradient, before clipping';
COMMENT ON COLUMN llm_grad_stats.data_norm IS 'L2 norm of its weights after the step';
COMMENT ON COLUMN llm_grad_stats.update_ratio IS
'||change of the weights|| / ||weights||: around 1e-3 is healthy (too small: lr too low; too big: unstable)';
CREATE INDEX llm_grad_stats_model_name_step ON llm_grad_stats (model, name, step);

-- ---- the optimizer ----------------------------------------------------------------

-- Used by the write-back of a training state (state.c): the UPDATE reads
-- each row's new values from the backend's memory through it.
CREATE FUNCTION llm_train_state_tensor(model text, name text, part text) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_train_state_tensor' LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_train_state_tensor(text, text, text) IS
'internal: a tensor (part data, grad, m or v) of the training state being written back to llm_param; '
'an error at any other time';

CREATE FUNCTION llm_adamw_step(model text, lr double precision,
                               weight_decay double precision DEFAULT 0.01,
                               beta1 double precision DEFAULT 0.9,
                               beta2 double precision DEFAULT 0.999,
                               eps double precision DEFAULT 1e-8,
                               max_grad_norm double precision DEFAULT NULL)
RETURNS real
    AS 'MODULE_PATHNAME', 'llm_adamw_step' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_adamw_step(text, double precision, double precision, double precision,
                                   double precision, double precision, double precision) IS
'one torch.optim.AdamW step of the model from the gradients in llm_param.grad: clipped first as '
'clip_grad_norm_(max_norm) when max_grad_norm is given, weight decay on the 2-D tensors only; '
'writes data, m, v, step and the clipped grad back in one UPDATE, logs llm_train_log and '
'llm_grad_stats; returns the gradient norm before clipping';

CREATE FUNCTION llm_lr(step bigint, lr double precision, warmup_steps int, decay_steps int,
                       min_lr double precision DEFAULT 0)
RETURNS double precision
    AS 'MODULE_PATHNAME', 'llm_lr_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_lr(bigint, double precision, int, int, double precision) IS
'nanoGPT''s learning rate for update number step (0 = the first): lr * (step + 1) / (warmup_steps + 1) '
'during warmup, then a cosine from lr down to min_lr at decay_steps, then min_lr';

-- ---- checkpoints ----------------------------------------------------------------------

CREATE TABLE llm_checkpoint (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model       text NOT NULL,
    step        int NOT NULL,
    note        text,
    config      jsonb NOT NULL,
    path        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE llm_checkpoint IS
'saved copies of a model''s weights and optimizer state (rows in llm_checkpoint_param)';
COMMENT ON COLUMN llm_checkpoint.id IS 'the checkpoint''s number, for llm_checkpoint_load';
COMMENT ON COLUMN llm_checkpoint.model IS
'the model it was saved from (a checkpoint outlives its model; any model of the same shape can load it)';
COMMENT ON COLUMN llm_checkpoint.step IS 'the optimizer steps the model had taken';
COMMENT ON COLUMN llm_checkpoint.note IS 'what the learner wrote about it';
COMMENT ON COLUMN llm_checkpoint.config IS 'the model''s shape (llm_model_shape) when saved';
COMMENT ON COLUMN llm_checkpoint.path IS 'the .safetensors file of the weights also written on the server, if any';
COMMENT ON COLUMN llm_checkpoint.created_at IS 'when it was saved';
COMMENT ON SEQUENCE llm_checkpoint_id_seq IS 'numbers the checkpoints (identity of llm_checkpoint.id)';

CREATE TABLE llm_checkpoint_param (
    checkpoint bigint NOT NULL REFERENCES llm_checkpoint (id) ON DELETE CASCADE,
    name       text NOT NULL,
    data       tensor NOT NULL,
    m          tensor,
    v          tensor,
    step       int NOT NULL,
    PRIMARY KEY (checkpoint, name)
);
COMMENT ON TABLE llm_checkpoint_param IS 'the saved llm_param rows of each checkpoint';
COMMENT ON COLUMN llm_checkpoint_param.checkpoint IS 'the checkpoint (llm_checkpoint.id)';
COMMENT ON COLUMN llm_checkpoint_param.name IS 'the parameter (llm_param.name)';
COMMENT ON COLUMN llm_checkpoint_param.data IS 'its weights';
COMMENT ON COLUMN llm_checkpoint_param.m IS 'its AdamW first moment (NULL: zeros)';
COMMENT ON COLUMN llm_checkpoint_param.v IS 'its AdamW second moment (NULL: zeros)';
COMMENT ON COLUMN llm_checkpoint_param.step IS 'its optimizer steps';

-- What a checkpoint must agree with to be loaded into a model.
CREATE FUNCTION llm_model_shape(p_model text) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
    SELECT jsonb_build_object('n_layer', n_layer, 'n_head', n_head, 'n_embd', n_embd,
                              'n_positions', n_positions, 'vocab_size', vocab_size,
                              'n_inner', coalesce(n_inner, 4 * n_embd),
                              'layer_norm_eps', layer_norm_eps)
    FROM llm_model_config WHERE model = p_model
$$;
COMMENT ON FUNCTION llm_model_shape(text) IS
'the settings of a model that fix its parameters'' shapes and math (NULL for an unknown model)';

CREATE FUNCTION llm_checkpoint_save(model text, note text DEFAULT NULL, path text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
    p_model text := model;
    saved bigint;
BEGIN
    PERFORM llm_require_arg('llm_checkpoint_save', 'model', p_model IS NULL);
    PERFORM llm_check_complete(p_model);    -- an unknown or incomplete model is an error
    -- No write-back may commit between the statements below.
    PERFORM 1 FROM llm_model_config c WHERE c.model = p_model FOR SHARE;

    INSERT INTO llm_checkpoint (model, step, note, config, path)
    SELECT p_model, max(p.step), note, llm_model_shape(p_model), path
    FROM llm_param p WHERE p.model = p_model
    RETURNING id INTO saved;
    INSERT INTO llm_checkpoint_param (checkpoint, name, data, m, v, step)
    SELECT saved, p.name, p.data, p.m, p.v, p.step
    FROM llm_param p WHERE p.model = p_model;

    IF path IS NOT NULL THEN
        PERFORM llm_write_safetensors(path, p_model);
    END IF;
    RETURN saved;
END $$;
COMMENT ON FUNCTION llm_checkpoint_save(text, text, text) IS
'save a copy of the model''s weights and AdamW state (m, v, step) in llm_checkpoint; with path, also '
'write the weights as a .safetensors file on the server; returns the checkpoint''s id';

CREATE FUNCTION llm_checkpoint_load(model text, checkpoint bigint) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
    p_model text := model;
    saved llm_checkpoint;
    shape jsonb;
    differences text;
    restored int;
BEGIN
    PERFORM llm_require_arg('llm_checkpoint_load', 'model', p_model IS NULL);
    PERFORM llm_require_arg('llm_checkpoint_load', 'checkpoint', checkpoint IS NULL);
    -- Lock the model as a write-back does: no step commits halfway through.
    PERFORM 1 FROM llm_model_config c WHERE c.model = p_model FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'llm_checkpoint_load: unknown model "%"', p_model
            USING ERRCODE = 'undefined_object', HINT = 'Models are registered in llm_model_config.';
    END IF;
    SELECT * INTO saved FROM llm_checkpoint c WHERE c.id = checkpoint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'llm_checkpoint_load: no checkpoint %', checkpoint
            USING ERRCODE = 'undefined_object', HINT = 'SELECT * FROM llm_checkpoints lists them.';
    END IF;
    shape := llm_model_shape(p_model);
    IF shape <> saved.config THEN
        SELECT string_agg(format('%s %s vs %s', k, shape -> k, saved.config -> k), ', ' ORDER BY k)
        INTO differences
        FROM jsonb_object_keys(shape || saved.config) AS k
        WHERE shape -> k IS DISTINCT FROM saved.config -> k;
        RAISE EXCEPTION 'llm_checkpoint_load: checkpoint % was saved from a model of another shape than "%"',
            checkpoint, p_model
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('model vs checkpoint: %s', differences),
                  HINT = 'Load it into a model registered with the same settings.';
    END IF;

    INSERT INTO llm_param AS p (model, name, data, grad, m, v, step)
    SELECT p_model, c.name, c.data, NULL, c.m, c.v, c.step
    FROM llm_checkpoint_param c WHERE c.checkpoint = saved.id
    ON CONFLICT ON CONSTRAINT llm_param_pkey DO UPDATE
        SET data = excluded.data, grad = NULL, m = excluded.m, v = excluded.v, step = excluded.step;
    GET DIAGNOSTICS restored = ROW_COUNT;
    PERFORM llm_check_complete(p_model);    -- every parameter came from the checkpoint
    IF restored <> (SELECT count(*) FROM llm_param p WHERE p.model = p_model) THEN
        RAISE EXCEPTION 'llm_checkpoint_load: checkpoint % lacks parameters of "%"', checkpoint, p_model
            USING ERRCODE = 'data_exception';
    END IF;
    RETURN restored;
END $$;
COMMENT ON FUNCTION llm_checkpoint_load(text, bigint) IS
'restore a model''s weights and AdamW state (m, v, step) from a checkpoint of a model of the same shape, '
'bit for bit; gradients become NULL; returns the parameters restored';

CREATE FUNCTION llm_checkpoint_delete(checkpoint bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
    PERFORM llm_require_arg('llm_checkpoint_delete', 'checkpoint', checkpoint IS NULL);
    DELETE FROM llm_checkpoint c WHERE c.id = checkpoint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'llm_checkpoint_delete: no checkpoint %', checkpoint
            USING ERRCODE = 'undefined_object', HINT = 'SELECT * FROM llm_checkpoints lists them.';
    END IF;
END $$;
COMMENT ON FUNCTION llm_checkpoint_delete(bigint) IS 'delete a checkpoint and its saved parameters';

CREATE VIEW llm_checkpoints AS
SELECT c.id, c.model, c.step, c.note, c.created_at, c.path,
       count(p.name)::int AS tensors,
       sum(pg_column_size(p.data) + coalesce(pg_column_size(p.m), 0)
           + coalesce(pg_column_size(p.v), 0)) AS bytes
FROM llm_checkpoint c LEFT JOIN llm_checkpoint_param p ON p.checkpoint = c.id
GROUP BY c.id
ORDER BY c.id;
COMMENT ON VIEW llm_checkpoints IS 'the saved checkpoints, oldest first, with their size';
COMMENT ON COLUMN llm_checkpoints.id IS 'the checkpoint''s number, for llm_checkpoint_load';
COMMENT ON COLUMN llm_checkpoints.model IS 'the model it was saved from';
COMMENT ON COLUMN llm_checkpoints.step IS 'the optimizer steps the model had taken';
COMMENT ON COLUMN llm_checkpoints.note IS 'what the learner wrote about it';
COMMENT ON COLUMN llm_checkpoints.created_at IS 'when it was saved';
COMMENT ON COLUMN llm_checkpoints.path IS 'the .safetensors file also written, if any';
COMMENT ON COLUMN llm_checkpoints.tensors IS 'how many parameters it holds';
COMMENT ON COLUMN llm_checkpoints.bytes IS 'the space its weights and moments take';
-- pg_llm: training steps -- the batched forward and fused backward
-- (gpt2/train_forward.c), one step from SQL (train/step.c), a run in one
-- procedure call (train/loop.c), and the replay of logged steps.
--
--   SELECT * FROM llm_gradients('lab', tokens, targets);          -- nothing written
--   SELECT llm_train_step('lab', tokens, targets, lr => 6e-4, clip => 1.0);
--   CALL llm_train('lab', steps => 1000, batch_size => 8, lr => 6e-4, warmup => 100);
--   SELECT llm_replay('lab', checkpoint => 3, to_step => 250);

CREATE FUNCTION llm_gradients(model text, tokens int[], targets int[])
RETURNS TABLE (name text, grad tensor)
    AS 'MODULE_PATHNAME', 'llm_gradients' LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 150;
COMMENT ON FUNCTION llm_gradients(text, int[], int[]) IS
'the gradient of every parameter of the model for a batch (tokens and targets: int[] of one sequence '
'or int[][] [B][T]; target -100: no loss there): d(mean cross-entropy)/d(weights), as loss.backward() '
'computes it; nothing is written';

CREATE FUNCTION llm_train_step(model text, tokens int[], targets int[], lr double precision,
                               weight_decay double precision DEFAULT 0.01,
                               beta1 double precision DEFAULT 0.9,
                               beta2 double precision DEFAULT 0.999,
                               eps double precision DEFAULT 1e-8,
                               clip double precision DEFAULT NULL)
RETURNS real
    AS 'MODULE_PATHNAME', 'llm_train_step' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_train_step(text, int[], int[], double precision, double precision,
                                   double precision, double precision, double precision,
                                   double precision) IS
'one training step on a batch (tokens, targets: int[] or int[][] [B][T], -100 ignored): forward, mean '
'cross-entropy, backward, clip_grad_norm_(clip) unless clip is NULL, AdamW (decay on 2-D tensors), '
'written back to llm_param (data, grad, m, v, step) in one UPDATE with a row of llm_train_log and '
'llm_grad_stats; returns the loss before the update';

CREATE PROCEDURE llm_train(model text, steps int, batch_size int DEFAULT 8,
                           lr double precision DEFAULT 6e-4, warmup int DEFAULT 0,
                           min_lr double precision DEFAULT NULL,
                           weight_decay double precision DEFAULT 0.1,
                           clip double precision DEFAULT 1.0, seed bigint DEFAULT 0,
                           grad_workers int DEFAULT NULL, prune_workers int DEFAULT NULL,
                           n_layer int DEFAULT NULL, n_head int DEFAULT NULL, d int DEFAULT NULL,
                           vocab int DEFAULT NULL, save_every int DEFAULT 50,
                           beta1 double precision DEFAULT 0.9, beta2 double precision DEFAULT 0.95,
                           eps double precision DEFAULT 1e-8, decay_steps int DEFAULT NULL,
                           notice_every int DEFAULT 1, split text DEFAULT 'train')
    AS 'MODULE_PATHNAME', 'llm_train' LANGUAGE C;
COMMENT ON PROCEDURE llm_train(text, int, int, double precision, int, double precision,
                               double precision, double precision, bigint, int, int, int, int, int,
                               int, int, double precision, double precision, double precision, int,
                               int, text) IS
'train the model for steps steps on llm_dataset (split, default ''train''): each step draws batch_size '
'examples with a generator seeded by (seed, llm_param.step), runs forward, backward, '
'clip_grad_norm_(clip) (NULL: none) and AdamW (lr: linear warmup over warmup steps, then a cosine '
'down to min_lr, default lr/10, at decay_steps, default steps), and COMMITs its rows of '
'llm_train_log and llm_grad_stats; the weights and AdamW state stay in memory and are written back '
'to llm_param every save_every steps and at the end (a cancel leaves the last write-back). '
'grad_workers: threads of the forward and backward; prune_workers: threads of clipping and AdamW '
'(NULL: pg_llm.threads). n_layer, n_head, d, vocab default to the model''s and must agree with it. '
'A NOTICE every notice_every steps (0: none). Results are bit-identical at any thread count.';

CREATE FUNCTION llm_replay(model text, checkpoint bigint, to_step int) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    p_model text := model;
    from_step int;
    rows bigint[];
    r record;
    tok int[];
    tgt int[];
    loss real;
BEGIN
    PERFORM llm_require_arg('llm_replay', 'model', p_model IS NULL);
    PERFORM llm_require_arg('llm_replay', 'checkpoint', checkpoint IS NULL);
    PERFORM llm_require_arg('llm_replay', 'to_step', to_step IS NULL);
    SELECT c.step INTO from_step FROM llm_checkpoint c WHERE c.id = checkpoint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'llm_replay: there is no checkpoint %', checkpoint
            USING ERRCODE = 'undefined_object';
    END IF;
    IF to_step < from_step THEN
        RAISE EXCEPTION 'llm_replay: to_step % is before checkpoint %''s step %', to_step, checkpoint, from_step
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the latest logged run of each step, chosen before the replay logs its own
    SELECT array_agg(l.id ORDER BY l.step) INTO rows
    FROM (SELECT DISTINCT ON (g.step) g.id, g.step FROM llm_train_log g
          WHERE g.model = p_model AND g.step > from_step AND g.step <= to_step
          ORDER BY g.step, g.id DESC) l;
    IF coalesce(cardinality(rows), 0) <> to_step - from_step THEN
        RAISE EXCEPTION 'llm_replay: llm_train_log of model "%" has % of the % steps % .. %',
            p_model, coalesce(cardinality(rows), 0), to_step - from_step, from_step + 1, to_step
            USING ERRCODE = 'no_data_found';
    END IF;

    PERFORM llm_checkpoint_load(p_model, checkpoint);
    FOR i IN 1 .. coalesce(cardinality(rows), 0) LOOP
        SELECT * INTO r FROM llm_train_log g WHERE g.id = rows[i];
        IF r.tokens IS NOT NULL THEN
            tok := r.tokens;
            tgt := r.targets;
        ELSIF r.batch IS NOT NULL THEN
            SELECT array_agg(d.tokens ORDER BY u.n), array_agg(d.target ORDER BY u.n) INTO tok, tgt
            FROM unnest(r.batch) WITH ORDINALITY AS u(id, n) JOIN llm_dataset d ON d.id = u.id;
            IF coalesce(cardinality(tok), 0) = 0
               OR array_length(tok, 1) <> cardinality(r.batch) THEN
                RAISE EXCEPTION 'llm_replay: examples of step % (llm_dataset ids %) are gone', r.step, r.batch
                    USING ERRCODE = 'no_data_found';
            END IF;
        ELSE
            RAISE EXCEPTION 'llm_replay: step % was taken from stored gradients (llm_adamw_step): '
                            'nothing to replay it from', r.step
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        loss := llm_train_step(p_model, tok, tgt, r.lr, r.weight_decay, r.beta1, r.beta2, r.eps, r.clip);
        IF loss IS DISTINCT FROM r.loss THEN
            RAISE WARNING 'llm_replay: step % has loss % now, % when logged', r.step, loss, r.loss;
        END IF;
    END LOOP;
    RETURN to_step - from_step;
END $$;
COMMENT ON FUNCTION llm_replay(text, bigint, int) IS
'restore checkpoint into the model, then re-run the logged steps after it up to to_step (the latest '
'logged run of each step: its batch from llm_dataset or its tokens, its lr and AdamW settings), one '
'llm_train_step each: the weights come out bit for bit as they were; returns the steps replayed';
-- pg_llm: datasets from text, and evaluation on them.
--
--   SELECT llm_dataset_from_text('shakespeare', pg_read_file(...), 64, val_fraction => 0.1);
--   SELECT * FROM llm_eval('shakespeare', 'val');            -- loss and perplexity
--
-- A dataset is rows of llm_dataset (80_train.sql): blocks of token ids and
-- the ids each position should predict.  Text becomes one by way of the
-- model's tokenizer (60_text.sql); pg_llm_lab.prepare_dataset does the same
-- for files on the client, with a progress bar.

CREATE FUNCTION llm_dataset_from_text(model text, input text, block_size int, stride int DEFAULT NULL,
                                      split text DEFAULT 'train',
                                      val_fraction double precision DEFAULT 0)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    PERFORM llm_require_arg('llm_dataset_from_text', 'model', model IS NULL);
    PERFORM llm_require_arg('llm_dataset_from_text', 'input', input IS NULL);
    RETURN llm_dataset_from_tokens(llm_encode(input, model), block_size, stride, split, val_fraction);
END $$;
COMMENT ON FUNCTION llm_dataset_from_text(text, text, int, int, text, double precision) IS
'encode text with the model''s tokenizer and cut it into llm_dataset rows of block_size tokens (see '
'llm_dataset_from_tokens: the last val_fraction of the tokens go to split ''val''); returns the rows added';

CREATE FUNCTION llm_eval(model text, split text DEFAULT 'val', max_rows int DEFAULT NULL,
                         OUT loss double precision, OUT perplexity double precision,
                         OUT tokens bigint, OUT examples bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    PERFORM llm_require_arg('llm_eval', 'model', model IS NULL);
    PERFORM llm_require_arg('llm_eval', 'split', split IS NULL);
    IF max_rows < 1 THEN
        RAISE EXCEPTION 'llm_eval: max_rows must be >= 1, got %', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- llm_loss is the mean over a row's counted targets: weigh it back by
    -- their number, so the result is the mean over every counted token.
    SELECT sum(r.loss * r.counted) / sum(r.counted), sum(r.counted), count(*)
    INTO loss, tokens, examples
    FROM (SELECT llm_loss(model, d.tokens, d.target)::double precision AS loss, c.counted
          FROM (SELECT * FROM llm_dataset d WHERE d.split = split ORDER BY d.id LIMIT max_rows) d,
               LATERAL (SELECT count(*) AS counted FROM unnest(d.target) AS t WHERE t <> -100) c
          WHERE c.counted > 0) r;
    IF examples = 0 THEN
        RAISE EXCEPTION 'llm_eval: llm_dataset has no rows with targets in split "%"', split
            USING ERRCODE = 'no_data_found',
                  HINT = 'Add some with llm_dataset_from_text(model, text, block_size, val_fraction => 0.1).';
    END IF;
    perplexity := exp(loss);
END $$;
COMMENT ON FUNCTION llm_eval(text, text, int) IS
'the model''s mean cross-entropy (nats per token) over every counted target of a split of llm_dataset '
'(the first max_rows rows by id, or all), its perplexity exp(loss), and how many tokens and rows it saw';
