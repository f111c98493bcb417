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

-- ---- what a learner is told is saved is saved -----------------------------------

-- Checkpoints and imports call this (and, in C, the training write-backs and
-- the tokenizers' stores), so that they survive a crash also where the server
-- runs synchronous_commit = off (the lab's server does: a training step's log
-- rows need not wait for the disk).
CREATE FUNCTION llm_commit_durably() RETURNS void
    AS 'MODULE_PATHNAME', 'llm_commit_durably_sql' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_commit_durably() IS
'make the calling transaction''s COMMIT wait until its WAL is on disk (SET LOCAL synchronous_commit = on) '
'where synchronous_commit is off';

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
    PERFORM llm_commit_durably();           -- a checkpoint that returned survives a crash
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
    PERFORM llm_commit_durably();           -- the weights it restored survive a crash
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
