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
    owner          name NOT NULL DEFAULT current_user,
    shared         boolean NOT NULL DEFAULT false,
    CONSTRAINT heads_divide_width CHECK (n_head < 1 OR n_embd % n_head = 0)  -- (n_head >= 1 says why not)
);
COMMENT ON TABLE llm_model_config IS 'GPT-2 shapes, one row per model; version changes with every write to llm_param';
COMMENT ON COLUMN llm_model_config.model IS
    'the model''s name, e.g. gpt2-small; llm_param.model refers to it. One owner per name in a database';
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
COMMENT ON COLUMN llm_model_config.owner IS
    'the role that registered it: only its owner trains it, imports into it or deletes it (90_classroom.sql)';
COMMENT ON COLUMN llm_model_config.shared IS
    'every role may read it, its parameters and its logs (llm_share); still only its owner changes it';

INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)
VALUES ('gpt2-small', 12, 12, 768, 1024, 50257);

-- The parameters GPT-2 has, with HuggingFace names and shapes (Conv1D
-- weights are [in, out]; lm_head is tied to wte and not listed).  The list
-- lives in C (extension/src/gpt2/model.c), which the weight cache and the
-- training state lay their arenas out by.
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
-- version number back to new weights.  Sharing a model or giving it to
-- another role changes neither its weights nor its settings: the version
-- stays, and so do the cached weights (who may use them is the policies'
-- question, asked on every call).
CREATE FUNCTION llm_model_config_new_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND to_jsonb(NEW) - '{shared,owner}'::text[] = to_jsonb(OLD) - '{shared,owner}'::text[] THEN
        RETURN NEW;
    END IF;
    NEW.version := nextval('llm_param_version_seq');
    RETURN NEW;
END $$;

CREATE TRIGGER llm_model_config_version BEFORE INSERT OR UPDATE ON llm_model_config
    FOR EACH ROW EXECUTE FUNCTION llm_model_config_new_version();
COMMENT ON FUNCTION llm_model_config_new_version() IS
'trigger: a new or changed llm_model_config row gets a fresh version, so cached weights reload '
'(not when only shared or owner changed)';

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

-- Whoever may read a model (its owner, every role once it is shared, an
-- instructor) may compute with it; only its owner changes it.  Every path
-- that writes a model's parameters calls this first, so a learner gets this
-- error rather than the silence of row-level security (an UPDATE of rows one
-- may not change updates none).  A superuser, to whom row security does not
-- apply, may change any model.  (A model one cannot see at all is unknown:
-- the callers say so in their own words.)
CREATE FUNCTION llm_require_model_owner(p_model text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    holder name;
BEGIN
    PERFORM llm_require_arg('llm_require_model_owner', 'p_model', p_model IS NULL);
    SELECT c.owner INTO holder FROM llm_model_config c WHERE c.model = p_model;
    IF holder <> current_user AND row_security_active('llm_model_config') THEN
        RAISE EXCEPTION 'model "%" belongs to %: only its owner may train it, import into it or change it',
            p_model, holder
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A shared model is read-only. To train a copy, register a model of your own with '
                         'the same shapes and load a checkpoint of this one into it (llm_checkpoint_save, '
                         'llm_checkpoint_load).';
    END IF;
END $$;
COMMENT ON FUNCTION llm_require_model_owner(text) IS
'internal (every path that writes a model): raise an error (42501) if the current role may read the model but not change it: it is not its owner and '
'row-level security applies (to a superuser it does not); an unknown model is its caller''s to report';

-- One token's embedding row, read with a TOAST slice (not all of wte).
CREATE FUNCTION llm_embedding_row(p_model text, token_id int) RETURNS tensor
SET search_path = pg_catalog, @extschema@, pg_temp
LANGUAGE sql STABLE AS $$
    SELECT llm_reshape(llm_slice(data, token_id, token_id + 1), ARRAY[-1])
    FROM llm_param WHERE model = p_model AND name = 'wte.weight'
$$;
COMMENT ON FUNCTION llm_embedding_row(text, int) IS
    'row token_id (0-based) of the model''s wte.weight as a 1-D tensor [n_embd]; reads only that row from storage';
