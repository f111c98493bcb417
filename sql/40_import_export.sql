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
    PERFORM llm_require_model_owner(p_model);
    PERFORM llm_commit_durably();           -- the weights it imported survive a crash

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
-- and, when the model has a tokenizer of its name (sql/60_tokenizer.sql),
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
