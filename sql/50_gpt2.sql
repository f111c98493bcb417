-- pg_llm: GPT-2 inference (extension/src/gpt2/: gpt2_sql.c over forward.c)
-- and initialisation (extension/src/ops/init.c).  Generation is in
-- 70_generate.sql.
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

-- The weight cache (one copy per server on PostgreSQL 17+, per backend on 15-16):
-- the decoded versions of the models you may see, and who uses them.
CREATE FUNCTION llm_model_cache(OUT model text, OUT version bigint, OUT dtype text, OUT bytes bigint,
                                OUT pins int, OUT loaded_by int, OUT loaded_at timestamptz,
                                OUT last_used timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_model_cache_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_model_cache() IS
'the decoded weights in the server''s shared cache, one row per model version you may see and dtype (fp32, or '
'bf16 under pg_llm.inference_dtype): its size, how many calls use it now (pins), the process (pg_backend_pid()) '
'that decoded it, when, and when it was last used. pg_llm.shared_cache_size caps the total';

CREATE FUNCTION llm_model_cache_clear() RETURNS void
    AS 'MODULE_PATHNAME', 'llm_model_cache_clear_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_model_cache_clear() IS
'free the cached weights of the models you may see that no call uses now (they are decoded again at the next use)';

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
    PERFORM llm_require_model_owner(llm_init.model);
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
