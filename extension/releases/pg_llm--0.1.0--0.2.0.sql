-- pg_llm 0.1.0 -> 0.2.0: ALTER EXTENSION pg_llm UPDATE runs this in one
-- transaction.  Every model, dataset, log and checkpoint is kept: tables are
-- ALTERed, never dropped and recreated; functions are CREATE OR REPLACEd (or
-- dropped first when their arguments or result type change).
--
-- It must turn a 0.1.0 catalog into exactly what pg_llm--0.2.0.sql (sql/*.sql)
-- creates.  tests/test_upgrade.py checks that and names every object that
-- differs: when you change sql/*.sql, add the same change here, in the order
-- of sql/'s files (see releases/README.md).
\echo Use "ALTER EXTENSION pg_llm UPDATE" to load this file. \quit

-- 50_gpt2.sql: llm_init inserts a tensor at a time, with progress NOTICEs for big models
CREATE OR REPLACE FUNCTION llm_init(model text, seed int) RETURNS void
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

-- 75_autograd.sql: training steps record on the tape too
COMMENT ON FUNCTION llm_autograd_mode(text) IS
    'set this session''s recording mode: off, meta (ops and shapes) or full (also values, for llm_backprop); returns it. '
    'Recording covers the SQL ops, llm_logits/llm_loss and each training step (its batch''s forward). '
    'While recording, parallel query is off for the session (a worker''s tape would be lost)';
