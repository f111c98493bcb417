-- pg_llm: the model registry and its parameters.

-- Every write to llm_param takes a fresh number from this sequence into
-- llm_model_config.version.  Sequences never hand out a number twice, even
-- across rollbacks, so (model, version) names one set of weights exactly:
-- the backend's decoded-weight cache is keyed by it.
CREATE SEQUENCE llm_param_version_seq;

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

INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)
VALUES ('gpt2-small', 12, 12, 768, 1024, 50257);

-- The parameters GPT-2 has, with HuggingFace names and shapes (Conv1D
-- weights are [in, out]; lm_head is tied to wte and not listed).  The list
-- lives in C (extension/src/gpt2/model_cache.c), next to the weight cache
-- that reads it.
CREATE FUNCTION llm_param_shapes(p_model text)
RETURNS TABLE (name text, shape int[])
    AS 'MODULE_PATHNAME', 'llm_param_shapes_sql' LANGUAGE C STABLE STRICT;

CREATE TABLE llm_param (
    model  text NOT NULL REFERENCES llm_model_config (model)
                ON DELETE CASCADE ON UPDATE CASCADE,
    name   text NOT NULL,
    shape  int[] GENERATED ALWAYS AS (llm_shape(data)) STORED,
    data   tensor NOT NULL,
    grad   tensor,
    m      tensor,                  -- AdamW first moment
    v      tensor,                  -- AdamW second moment
    step   int NOT NULL DEFAULT 0,  -- optimizer steps taken
    PRIMARY KEY (model, name)
);
COMMENT ON TABLE llm_param IS 'one row per named GPT-2 tensor (HuggingFace names), with gradient and AdamW state';

-- Every row is checked against the model's shapes, whoever writes it.
CREATE FUNCTION llm_param_check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    expected int[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM llm_model_config WHERE model = NEW.model) THEN
        RAISE EXCEPTION 'llm_param: unknown model "%"', NEW.model
            USING ERRCODE = 'undefined_object',
                  HINT = 'Models are registered in llm_model_config.';
    END IF;
    SELECT s.shape INTO expected
    FROM llm_param_shapes(NEW.model) s WHERE s.name = NEW.name;
    IF expected IS NULL THEN
        RAISE EXCEPTION 'llm_param: model "%" has no parameter named "%"', NEW.model, NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'SELECT * FROM llm_param_shapes(model) lists the names.';
    END IF;
    IF llm_shape(NEW.data) <> expected THEN
        RAISE EXCEPTION 'llm_param: "%" of model "%" has shape %, expected %',
            NEW.name, NEW.model, llm_shape(NEW.data), expected
            USING ERRCODE = 'data_exception';
    END IF;
    IF llm_shape(NEW.grad) <> expected OR llm_shape(NEW.m) <> expected
       OR llm_shape(NEW.v) <> expected THEN
        RAISE EXCEPTION 'llm_param: grad, m and v of "%" must have shape %', NEW.name, expected
            USING ERRCODE = 'data_exception';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER llm_param_check BEFORE INSERT OR UPDATE ON llm_param
    FOR EACH ROW EXECUTE FUNCTION llm_param_check();

-- Bump the version of every model whose parameters a statement touched.
CREATE FUNCTION llm_param_bump_version() RETURNS trigger
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
        WHERE model IN (SELECT model FROM new_rows UNION SELECT model FROM old_rows);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER llm_param_version_ins AFTER INSERT ON llm_param
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_param_bump_version();
CREATE TRIGGER llm_param_version_upd AFTER UPDATE ON llm_param
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_param_bump_version();
CREATE TRIGGER llm_param_version_del AFTER DELETE ON llm_param
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_param_bump_version();
CREATE TRIGGER llm_param_version_trunc AFTER TRUNCATE ON llm_param
    FOR EACH STATEMENT EXECUTE FUNCTION llm_param_bump_version();

-- Error unless `model` has every parameter it should (used after imports).
CREATE FUNCTION llm_check_complete(p_model text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    missing text[];
BEGIN
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

-- One token's embedding row, read with a TOAST slice (not all of wte).
CREATE FUNCTION llm_embedding_row(p_model text, token_id int) RETURNS tensor
LANGUAGE sql STABLE AS $$
    SELECT llm_reshape(llm_slice(data, token_id, token_id + 1), ARRAY[-1])
    FROM llm_param WHERE model = p_model AND name = 'wte.weight'
$$;
