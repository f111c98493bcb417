-- pg_llm 0.2.0 -> 0.3.0: ALTER EXTENSION pg_llm UPDATE runs this in one
-- transaction.  Every model, dataset, log and checkpoint is kept: tables are
-- ALTERed, never dropped and recreated; functions are CREATE OR REPLACEd (or
-- dropped first when their arguments or result type change).
--
-- It must turn a 0.2.0 catalog into exactly what pg_llm--0.3.0.sql (sql/*.sql)
-- creates.  tests/test_upgrade.py checks that and names every object that
-- differs: when you change sql/*.sql, add the same change here, in the order
-- of sql/'s files (see releases/README.md).  Each change is one commented
-- block, so that branches adding to this file merge cleanly.  A new function
-- is not copied by hand: python3 tools/gen_upgrade_functions.py writes its
-- CREATE and COMMENT ON into the block of new functions at the end.
\echo Use "ALTER EXTENSION pg_llm UPDATE" to load this file. \quit

-- ---- issue 14 (a class on one server), 75_autograd.sql: one tape per session.  The tables become llm_tensor_rt_all and
-- llm_tape_all, keyed by (session, id); llm_tensor_rt and llm_tape are views of the
-- reading session's rows.  (The tape is runtime state: the rows of 0.2.0 go.)
DELETE FROM llm_tape;
DELETE FROM llm_tensor_rt;
ALTER TABLE llm_tensor_rt RENAME TO llm_tensor_rt_all;
ALTER TABLE llm_tensor_rt_all RENAME CONSTRAINT llm_tensor_rt_pkey TO llm_tensor_rt_all_pkey;
ALTER TABLE llm_tensor_rt_all ADD COLUMN session int NOT NULL DEFAULT pg_backend_pid(),
    DROP CONSTRAINT llm_tensor_rt_all_pkey, ADD PRIMARY KEY (session, id);
COMMENT ON TABLE llm_tensor_rt_all IS
    'the tensors of every session''s tape (runtime tensors), one row each; llm_tensor_rt shows your session''s';
COMMENT ON COLUMN llm_tensor_rt_all.session IS 'the process id (pg_backend_pid()) of the session that recorded it';
COMMENT ON COLUMN llm_tensor_rt_all.id IS 'as llm_tensor_rt.id';
COMMENT ON COLUMN llm_tensor_rt_all.shape IS 'as llm_tensor_rt.shape';
COMMENT ON COLUMN llm_tensor_rt_all.data IS 'as llm_tensor_rt.data';
COMMENT ON COLUMN llm_tensor_rt_all.grad IS 'as llm_tensor_rt.grad';
COMMENT ON COLUMN llm_tensor_rt_all.param_name IS 'as llm_tensor_rt.param_name';
COMMENT ON COLUMN llm_tensor_rt_all.produced_by IS 'as llm_tensor_rt.produced_by';

CREATE VIEW llm_tensor_rt AS
    SELECT id, shape, data, grad, param_name, produced_by
    FROM llm_tensor_rt_all WHERE session = pg_backend_pid();
COMMENT ON VIEW llm_tensor_rt IS
    'the tensors of this session''s last recorded computation (runtime tensors), one row each. An op''s tensor argument is '
    'matched by value (shape and bytes) to the latest tensor of the tape that had it: equal tensors are one node, '
    'and a value seen for the first time is a new leaf. Another session''s: llm_tensor_rt_all';
COMMENT ON COLUMN llm_tensor_rt.id IS 'the tensor''s id: llm_tape.inputs and llm_tape.output refer to it';
COMMENT ON COLUMN llm_tensor_rt.shape IS 'the tensor''s shape';
COMMENT ON COLUMN llm_tensor_rt.data IS 'its values (mode full; NULL in mode meta)';
COMMENT ON COLUMN llm_tensor_rt.grad IS 'd(root)/d(this tensor) after llm_backprop(); NULL before, or when the root does not depend on it';
COMMENT ON COLUMN llm_tensor_rt.param_name IS
    'for a leaf that is a parameter: its llm_param.name (GPT-2''s llm_loss names its weights; llm_tensor_rt_leaf names others)';
COMMENT ON COLUMN llm_tensor_rt.produced_by IS 'the llm_tape.id of the op whose output this is; NULL for a leaf';

ALTER TABLE llm_tape RENAME TO llm_tape_all;
ALTER TABLE llm_tape_all RENAME CONSTRAINT llm_tape_pkey TO llm_tape_all_pkey;
ALTER TABLE llm_tape_all ADD COLUMN session int NOT NULL DEFAULT pg_backend_pid(),
    DROP CONSTRAINT llm_tape_all_pkey, ADD PRIMARY KEY (session, id);
COMMENT ON TABLE llm_tape_all IS
    'the ops of every session''s tape, one row each; llm_tape shows your session''s';
COMMENT ON COLUMN llm_tape_all.session IS 'the process id (pg_backend_pid()) of the session that recorded it';
COMMENT ON COLUMN llm_tape_all.id IS 'as llm_tape.id';
COMMENT ON COLUMN llm_tape_all.op IS 'as llm_tape.op';
COMMENT ON COLUMN llm_tape_all.inputs IS 'as llm_tape.inputs';
COMMENT ON COLUMN llm_tape_all.output IS 'as llm_tape.output';
COMMENT ON COLUMN llm_tape_all.shape IS 'as llm_tape.shape';
COMMENT ON COLUMN llm_tape_all.attrs IS 'as llm_tape.attrs';

CREATE VIEW llm_tape AS
    SELECT id, op, inputs, output, shape, attrs
    FROM llm_tape_all WHERE session = pg_backend_pid();
COMMENT ON VIEW llm_tape IS
    'the ops of this session''s last recorded computation in the order they ran, one row each; llm_backprop() walks '
    'it backwards. Another session''s: llm_tape_all';
COMMENT ON COLUMN llm_tape.id IS 'position on the tape: 1 is the first op';
COMMENT ON COLUMN llm_tape.op IS 'the op, named as its SQL function (llm_attention_qkv: GPT-2''s attention over its fused [T, 3C] q, k, v)';
COMMENT ON COLUMN llm_tape.inputs IS 'the llm_tensor_rt ids of its tensor arguments, in argument order';
COMMENT ON COLUMN llm_tape.output IS 'the llm_tensor_rt id of its result (a loss is a tensor of shape {1})';
COMMENT ON COLUMN llm_tape.shape IS 'the shape of its result';
COMMENT ON COLUMN llm_tape.attrs IS 'its other arguments: transposes, causal, n_head, eps, scale, slice bounds, token ids, targets';

-- PostgreSQL 18 names NOT NULL constraints after their table: rename them as a fresh install names them.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT conrelid::regclass AS tab, conname,
                    regexp_replace(conname, '^(llm_tape|llm_tensor_rt)_', '\1_all_') AS new_name
             FROM pg_constraint
             WHERE conrelid IN ('llm_tape_all'::regclass, 'llm_tensor_rt_all'::regclass)
               AND contype = 'n' AND conname !~ '_all_'
    LOOP
        EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', c.tab, c.conname, c.new_name);
    END LOOP;
END $$;

COMMENT ON FUNCTION llm_prune_autograd_state() IS
    'forget this session''s tape and empty llm_tape and llm_tensor_rt (this session''s rows)';
-- ---- end of issue 14 (tape per session)

-- ---- issue 15 (layout): llm_train's prune_workers is named optimizer_workers
-- (the threads of clipping and AdamW).  A parameter's name cannot change in
-- place: drop the procedure and create it again.
DROP PROCEDURE llm_train(text, int, int, double precision, int, double precision,
                         double precision, double precision, bigint, int, int, int, int, int,
                         int, int, double precision, double precision, double precision, int,
                         int, text);
CREATE PROCEDURE llm_train(model text, steps int, batch_size int DEFAULT 8,
                           lr double precision DEFAULT 6e-4, warmup int DEFAULT 0,
                           min_lr double precision DEFAULT NULL,
                           weight_decay double precision DEFAULT 0.1,
                           clip double precision DEFAULT 1.0, seed bigint DEFAULT 0,
                           grad_workers int DEFAULT NULL, optimizer_workers int DEFAULT NULL,
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
'grad_workers: threads of the forward and backward; optimizer_workers: threads of clipping and AdamW '
'(NULL: pg_llm.threads). n_layer, n_head, d, vocab default to the model''s and must agree with it. '
'A NOTICE every notice_every steps (0: none). Results are bit-identical at any thread count.';
-- ---- end of issue 15 (layout)

-- ---- issue 17 (runs): named runs that resume exactly, and the true history of
-- the weights.  llm_train_lineage: one row per committed write-back or
-- checkpoint load; llm_train_log.lineage stamps the steps it kept;
-- llm_train_history follows the chain; llm_train_run records a named run;
-- llm_train takes run => ...  (Steps logged before 0.3.0 have no stamp, so
-- they are in no model's history.)
ALTER TABLE llm_train_log ADD COLUMN run text, ADD COLUMN lineage bigint;
COMMENT ON COLUMN llm_train_log.id IS
'order of the rows; a step number repeats after a checkpoint load or a crash (llm_train_history has it once)';
COMMENT ON COLUMN llm_train_log.run IS 'the named run of CALL llm_train(..., run => ...) that took it (llm_train_run)';
COMMENT ON COLUMN llm_train_log.lineage IS
'the write-back (llm_train_lineage) that made the step part of the model''s weights; NULL: never written '
'back -- a step of a run still going, or one lost to a crash or a cancel (not in llm_train_history)';
CREATE INDEX llm_train_log_lineage ON llm_train_log (lineage);

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

CREATE VIEW llm_train_history AS
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

ALTER TABLE llm_checkpoint ADD COLUMN lineage bigint REFERENCES llm_train_lineage (id) ON DELETE SET NULL;
COMMENT ON COLUMN llm_checkpoint.lineage IS
'the history of its weights (llm_train_lineage; NULL: none), which a load continues';

CREATE OR REPLACE FUNCTION llm_checkpoint_save(model text, note text DEFAULT NULL, path text DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION llm_checkpoint_load(model text, checkpoint bigint) RETURNS int
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
    INSERT INTO llm_train_lineage (model, step, version, parent, checkpoint)
    SELECT p_model, saved.step, c.version, saved.lineage, saved.id
    FROM llm_model_config c WHERE c.model = p_model;
    RETURN restored;
END $$;
COMMENT ON FUNCTION llm_checkpoint_load(text, bigint) IS
'restore a model''s weights and AdamW state (m, v, step) from a checkpoint of a model of the same shape, '
'bit for bit; gradients become NULL; llm_train_history continues the checkpoint''s; returns the '
'parameters restored';

-- A named run: what CALL llm_train(..., run => 'name') was first called with.
CREATE TABLE llm_train_run (
    model             text NOT NULL REFERENCES llm_model_config (model) ON DELETE CASCADE ON UPDATE CASCADE,
    run               text NOT NULL,
    steps             int NOT NULL,
    batch_size        int NOT NULL,
    lr                double precision NOT NULL,
    warmup            int NOT NULL,
    min_lr            double precision NOT NULL,
    decay_steps       int NOT NULL,
    weight_decay      double precision NOT NULL,
    clip              double precision,
    beta1             double precision NOT NULL,
    beta2             double precision NOT NULL,
    eps               double precision NOT NULL,
    seed              bigint NOT NULL,
    split             text NOT NULL,
    examples          int NOT NULL,
    examples_checksum bigint NOT NULL,
    start_step        int NOT NULL,
    start_lineage     bigint REFERENCES llm_train_lineage (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, run)
);
COMMENT ON TABLE llm_train_run IS
'the named runs of CALL llm_train(..., run => name): their settings, which a call continuing one must repeat';
COMMENT ON COLUMN llm_train_run.model IS 'the model it trains';
COMMENT ON COLUMN llm_train_run.run IS 'its name (run => ...)';
COMMENT ON COLUMN llm_train_run.steps IS 'the optimizer steps it takes in all';
COMMENT ON COLUMN llm_train_run.batch_size IS 'examples per step';
COMMENT ON COLUMN llm_train_run.lr IS 'peak learning rate';
COMMENT ON COLUMN llm_train_run.warmup IS 'steps of linear warmup';
COMMENT ON COLUMN llm_train_run.min_lr IS 'the learning rate the cosine ends at';
COMMENT ON COLUMN llm_train_run.decay_steps IS 'the step (of the run, from 0) the cosine ends at';
COMMENT ON COLUMN llm_train_run.weight_decay IS 'AdamW weight decay';
COMMENT ON COLUMN llm_train_run.clip IS 'the max_norm gradients are clipped to (NULL: none)';
COMMENT ON COLUMN llm_train_run.beta1 IS 'AdamW beta1';
COMMENT ON COLUMN llm_train_run.beta2 IS 'AdamW beta2';
COMMENT ON COLUMN llm_train_run.eps IS 'AdamW eps';
COMMENT ON COLUMN llm_train_run.seed IS 'seeds the batches, with the model''s step';
COMMENT ON COLUMN llm_train_run.split IS 'the llm_dataset split it draws from';
COMMENT ON COLUMN llm_train_run.examples IS 'how many examples the split had';
COMMENT ON COLUMN llm_train_run.examples_checksum IS 'a checksum of their llm_dataset ids: the batches index them';
COMMENT ON COLUMN llm_train_run.start_step IS 'llm_param.step when it began: its step i is the model''s start_step + i + 1';
COMMENT ON COLUMN llm_train_run.start_lineage IS 'the weights it began from (llm_train_lineage; NULL: none recorded)';
COMMENT ON COLUMN llm_train_run.created_at IS 'when it began';

DROP PROCEDURE llm_train(text, int, int, double precision, int, double precision,
                         double precision, double precision, bigint, int, int, int, int, int,
                         int, int, double precision, double precision, double precision, int,
                         int, text);
CREATE PROCEDURE llm_train(model text, steps int, batch_size int DEFAULT 8,
                           lr double precision DEFAULT 6e-4, warmup int DEFAULT 0,
                           min_lr double precision DEFAULT NULL,
                           weight_decay double precision DEFAULT 0.1,
                           clip double precision DEFAULT 1.0, seed bigint DEFAULT 0,
                           grad_workers int DEFAULT NULL, optimizer_workers int DEFAULT NULL,
                           n_layer int DEFAULT NULL, n_head int DEFAULT NULL, d int DEFAULT NULL,
                           vocab int DEFAULT NULL, save_every int DEFAULT 50,
                           beta1 double precision DEFAULT 0.9, beta2 double precision DEFAULT 0.95,
                           eps double precision DEFAULT 1e-8, decay_steps int DEFAULT NULL,
                           notice_every int DEFAULT 1, split text DEFAULT 'train',
                           run text DEFAULT NULL)
    AS 'MODULE_PATHNAME', 'llm_train' LANGUAGE C;
COMMENT ON PROCEDURE llm_train(text, int, int, double precision, int, double precision,
                               double precision, double precision, bigint, int, int, int, int, int,
                               int, int, double precision, double precision, double precision, int,
                               int, text, text) IS
'train the model for steps steps on llm_dataset (split, default ''train''): each step draws batch_size '
'examples with a generator seeded by (seed, llm_param.step), runs forward, backward, '
'clip_grad_norm_(clip) (NULL: none) and AdamW (lr: linear warmup over warmup steps, then a cosine '
'down to min_lr, default lr/10, at decay_steps, default steps), and COMMITs its rows of '
'llm_train_log and llm_grad_stats; the weights and AdamW state stay in memory and are written back '
'to llm_param every save_every steps and at the end (a cancel leaves the last write-back). '
'grad_workers: threads of the forward and backward; optimizer_workers: threads of clipping and AdamW '
'(NULL: pg_llm.threads). n_layer, n_head, d, vocab default to the model''s and must agree with it. '
'A NOTICE every notice_every steps (0: none). Results are bit-identical at any thread count. '
'run names the run (llm_train_run): the first call records it, the same call again continues it from '
'its last write-back to its steps, with the same learning rates, batches and AdamW state, as if it '
'had never stopped (ERROR for settings that differ from the run''s).';

CREATE OR REPLACE FUNCTION llm_replay(model text, checkpoint bigint, to_step int) RETURNS int
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
    -- the steps of the weights' history, chosen before the replay logs its own
    SELECT array_agg(h.id ORDER BY h.step) INTO rows
    FROM llm_train_history h
    WHERE h.model = p_model AND h.step > from_step AND h.step <= to_step;
    IF coalesce(cardinality(rows), 0) <> to_step - from_step THEN
        RAISE EXCEPTION 'llm_replay: llm_train_history of model "%" has % of the % steps % .. %',
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
'restore checkpoint into the model, then re-run the steps after it up to to_step as the history of '
'the model''s weights has them (llm_train_history: its batch from llm_dataset or its tokens, its lr and '
'AdamW settings), one llm_train_step each: the weights come out bit for bit as they were; returns the '
'steps replayed';
-- ---- end of issue 17 (runs)

-- ---- issue 16 (one copy of the weights per server), 50_gpt2.sql: llm_model_cache() lists the
-- versions in the shared weight cache (one row each, with pins and who decoded it) instead of
-- one row for the backend's single cached model.
DROP FUNCTION llm_model_cache();
CREATE FUNCTION llm_model_cache(OUT model text, OUT version bigint, OUT bytes bigint, OUT pins int,
                                OUT loaded_by int, OUT loaded_at timestamptz, OUT last_used timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_model_cache_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_model_cache() IS
'the decoded weights in the server''s shared cache, one row per model version you may see: its size, how many '
'calls use it now (pins), the process (pg_backend_pid()) that decoded it, when, and when it was last used. '
'pg_llm.shared_cache_size caps the total';
COMMENT ON FUNCTION llm_model_cache_clear() IS
'free the cached weights of the models you may see that no call uses now (they are decoded again at the next use)';
-- ---- end of issue 16 (weights)

-- ---- new functions of sql/*.sql: written by tools/gen_upgrade_functions.py, do not edit
-- ---- end of new functions
