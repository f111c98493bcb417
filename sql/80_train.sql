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
    dataset text NOT NULL DEFAULT current_user,
    owner   name NOT NULL DEFAULT current_user,
    shared  boolean NOT NULL DEFAULT false,
    CONSTRAINT llm_dataset_one_row_of_tokens CHECK (array_ndims(tokens) = 1 AND array_ndims(target) = 1),
    CONSTRAINT llm_dataset_aligned CHECK (cardinality(tokens) = cardinality(target)),
    CONSTRAINT llm_dataset_token_ids CHECK (0 <= ALL (tokens) AND -100 <= ALL (target))
);
COMMENT ON TABLE llm_dataset IS
'training examples: a block of token ids and the ids each position should predict (-100: ignored)';
COMMENT ON COLUMN llm_dataset.id IS 'the example''s number; llm_train_log.batch lists them';
COMMENT ON COLUMN llm_dataset.tokens IS 'the input token ids, a block of the text';
COMMENT ON COLUMN llm_dataset.target IS 'the next token after each input position (-100: no loss there)';
COMMENT ON COLUMN llm_dataset.split IS 'train, val, ... : which examples of the dataset a run trains or evaluates on';
COMMENT ON COLUMN llm_dataset.dataset IS
    'the dataset''s name (default: the role that made it); one owner per name in a database';
COMMENT ON COLUMN llm_dataset.owner IS 'the role that made the row: only its owner changes or deletes it';
COMMENT ON COLUMN llm_dataset.shared IS 'every role may read it (llm_share of a model trained on it)';
COMMENT ON SEQUENCE llm_dataset_id_seq IS 'numbers the llm_dataset rows (identity of llm_dataset.id)';
CREATE INDEX llm_dataset_dataset_split ON llm_dataset (dataset, split, id);
COMMENT ON INDEX llm_dataset_dataset_split IS 'a split of a dataset in id order: what a run draws from';

CREATE FUNCTION llm_dataset_from_tokens(tokens int[], block_size int, stride int DEFAULT NULL,
                                        split text DEFAULT 'train',
                                        val_fraction double precision DEFAULT 0,
                                        dataset text DEFAULT current_user)
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
    PERFORM llm_require_arg('llm_dataset_from_tokens', 'dataset', dataset IS NULL);
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
        INSERT INTO llm_dataset (tokens, target, split, dataset)
        SELECT part.ids[s + 1 : s + block_size], part.ids[s + 2 : s + block_size + 1], part.name, dataset
        FROM generate_series(0, cardinality(part.ids) - block_size - 1, step) AS s
        ORDER BY s;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        total := total + inserted;
    END LOOP;
    RETURN total;
END $$;
COMMENT ON FUNCTION llm_dataset_from_tokens(int[], int, int, text, double precision, text) IS
'cut a token stream into rows of llm_dataset `dataset` (default: named after you): blocks of block_size '
'tokens every stride tokens (default: block_size, no overlap), target = the same block shifted by one token; '
'the last val_fraction of the tokens go to split ''val''; returns the rows added';

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
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    run          text,
    lineage      bigint,
    dtype        text NOT NULL DEFAULT 'fp32'
);
COMMENT ON TABLE llm_train_log IS
'one row per optimizer step: how it went (loss, grad_norm) and what replays it (batch and settings)';
COMMENT ON COLUMN llm_train_log.id IS
'order of the rows; a step number repeats after a checkpoint load or a crash (llm_train_history has it once)';
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
COMMENT ON COLUMN llm_train_log.run IS 'the named run of CALL llm_train(..., run => ...) that took it (llm_train_run)';
COMMENT ON COLUMN llm_train_log.lineage IS
'the write-back (llm_train_lineage) that made the step part of the model''s weights; NULL: never written '
'back -- a step of a run still going, or one lost to a crash or a cancel (not in llm_train_history)';
COMMENT ON COLUMN llm_train_log.dtype IS
'what the step computed in: ''fp32'', or ''bf16'' mixed precision (llm_train(..., dtype => ''bf16''))';
COMMENT ON SEQUENCE llm_train_log_id_seq IS 'numbers the llm_train_log rows (identity of llm_train_log.id)';
CREATE INDEX llm_train_log_model_step ON llm_train_log (model, step);
CREATE INDEX llm_train_log_lineage ON llm_train_log (lineage);

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

-- ---- the history of the weights --------------------------------------------------
--
-- Steps are logged as they are taken, but llm_param only changes when they
-- are written back: a crash loses the steps since the last write-back.  Each
-- committed write-back (and each checkpoint load) adds a row to
-- llm_train_lineage, in the same transaction as the new weights, naming the
-- row it built on, and stamps the log rows of its steps with its id.  So the
-- chain of rows from the model's newest one back to the first is the history
-- of the weights now in llm_param, and a log row without a stamp was lost.

CREATE TABLE llm_train_lineage (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model       text NOT NULL REFERENCES llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    step        int NOT NULL,
    version     bigint NOT NULL,
    parent      bigint REFERENCES llm_train_lineage (id) ON DELETE SET NULL,
    checkpoint  bigint,
    run         text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE llm_train_lineage IS
'one row per committed write-back of training steps or checkpoint load: which weights it wrote and '
'which it built on (llm_train_history follows the chain)';
COMMENT ON COLUMN llm_train_lineage.id IS 'its number; llm_train_log.lineage of the steps it wrote back';
COMMENT ON COLUMN llm_train_lineage.model IS 'the model whose llm_param rows it wrote';
COMMENT ON COLUMN llm_train_lineage.step IS 'llm_param.step after it';
COMMENT ON COLUMN llm_train_lineage.version IS
'llm_model_config.version of the weights it wrote (the model''s still has it: nothing wrote llm_param since)';
COMMENT ON COLUMN llm_train_lineage.parent IS
'the row of the weights it started from (NULL: weights no training or load wrote, e.g. llm_init or an import)';
COMMENT ON COLUMN llm_train_lineage.checkpoint IS 'the checkpoint loaded (NULL: a write-back of training steps)';
COMMENT ON COLUMN llm_train_lineage.run IS 'the named run that wrote it back (llm_train_run), if any';
COMMENT ON COLUMN llm_train_lineage.created_at IS 'when it was written';
COMMENT ON SEQUENCE llm_train_lineage_id_seq IS 'numbers the llm_train_lineage rows (identity of llm_train_lineage.id)';
CREATE INDEX llm_train_lineage_model_step ON llm_train_lineage (model, step, id);
ALTER TABLE llm_train_log ADD FOREIGN KEY (lineage) REFERENCES llm_train_lineage (id) ON DELETE SET NULL;

-- Writes that are neither (llm_init, imports, a manual UPDATE) keep no row:
-- the newest row at the model's step is where its weights are.  A write that
-- moved the step elsewhere (llm_init: step 0) leaves none there, and the
-- history starts anew.
CREATE FUNCTION llm_train_head(model text) RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
    SELECT l.id FROM llm_train_lineage l
    WHERE l.model = $1 AND l.step = (SELECT max(p.step) FROM llm_param p WHERE p.model = $1)
    ORDER BY l.id DESC LIMIT 1
$$;
COMMENT ON FUNCTION llm_train_head(text) IS
'the llm_train_lineage row of the weights the model has now: the newest at its llm_param.step (NULL: none)';

CREATE VIEW llm_train_history WITH (security_invoker = true) AS
WITH RECURSIVE chain (model, lineage) AS (
    SELECT c.model, llm_train_head(c.model) FROM llm_model_config c
    UNION ALL
    SELECT chain.model, l.parent
    FROM chain JOIN llm_train_lineage l ON l.id = chain.lineage
    WHERE l.parent IS NOT NULL
)
SELECT chain.model, g.run, g.step, g.loss, g.lr, g.grad_norm, g.tokens_per_s, g.batch,
       g.weight_decay, g.beta1, g.beta2, g.eps, g.clip, g.tokens, g.targets, g.created_at,
       g.id, g.model AS trained_as, g.lineage
FROM chain JOIN llm_train_log g ON g.lineage = chain.lineage;
COMMENT ON VIEW llm_train_history IS
'for each model, one row per optimizer step of the history of the weights now in llm_param (the '
'llm_train_log rows its write-backs and checkpoint loads chain back to); steps lost to a crash, or '
'undone by loading an earlier checkpoint, are not in it';
COMMENT ON COLUMN llm_train_history.model IS 'the model whose weights the step is part of';
COMMENT ON COLUMN llm_train_history.run IS 'as llm_train_log.run';
COMMENT ON COLUMN llm_train_history.step IS 'as llm_train_log.step: one row each';
COMMENT ON COLUMN llm_train_history.loss IS 'as llm_train_log.loss';
COMMENT ON COLUMN llm_train_history.lr IS 'as llm_train_log.lr';
COMMENT ON COLUMN llm_train_history.grad_norm IS 'as llm_train_log.grad_norm';
COMMENT ON COLUMN llm_train_history.tokens_per_s IS 'as llm_train_log.tokens_per_s';
COMMENT ON COLUMN llm_train_history.batch IS 'as llm_train_log.batch';
COMMENT ON COLUMN llm_train_history.weight_decay IS 'as llm_train_log.weight_decay';
COMMENT ON COLUMN llm_train_history.beta1 IS 'as llm_train_log.beta1';
COMMENT ON COLUMN llm_train_history.beta2 IS 'as llm_train_log.beta2';
COMMENT ON COLUMN llm_train_history.eps IS 'as llm_train_log.eps';
COMMENT ON COLUMN llm_train_history.clip IS 'as llm_train_log.clip';
COMMENT ON COLUMN llm_train_history.tokens IS 'as llm_train_log.tokens';
COMMENT ON COLUMN llm_train_history.targets IS 'as llm_train_log.targets';
COMMENT ON COLUMN llm_train_history.created_at IS 'as llm_train_log.created_at';
COMMENT ON COLUMN llm_train_history.id IS 'the llm_train_log row';
COMMENT ON COLUMN llm_train_history.trained_as IS
'llm_train_log.model: the model that took the step (another one when a checkpoint of it was loaded)';
COMMENT ON COLUMN llm_train_history.lineage IS 'the write-back that kept it (llm_train_lineage)';

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
    created_at  timestamptz NOT NULL DEFAULT now(),
    lineage     bigint REFERENCES llm_train_lineage (id) ON DELETE SET NULL,
    owner       name NOT NULL DEFAULT current_user
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
COMMENT ON COLUMN llm_checkpoint.lineage IS
'the history of its weights (llm_train_lineage; NULL: none), which a load continues';
COMMENT ON COLUMN llm_checkpoint.owner IS 'the role that saved it: only its owner reads, loads or deletes it';
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

    INSERT INTO llm_checkpoint (model, step, note, config, path, lineage)
    SELECT p_model, max(p.step), note, llm_model_shape(p_model), path, llm_train_head(p_model)
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
    PERFORM llm_require_model_owner(p_model);
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
    INSERT INTO llm_train_lineage (model, step, version, parent, checkpoint)
    SELECT p_model, saved.step, c.version, saved.lineage, saved.id
    FROM llm_model_config c WHERE c.model = p_model;
    RETURN restored;
END $$;
COMMENT ON FUNCTION llm_checkpoint_load(text, bigint) IS
'restore a model''s weights and AdamW state (m, v, step) from a checkpoint of a model of the same shape, '
'bit for bit; gradients become NULL; llm_train_history continues the checkpoint''s; returns the '
'parameters restored';

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

CREATE VIEW llm_checkpoints WITH (security_invoker = true) AS
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
