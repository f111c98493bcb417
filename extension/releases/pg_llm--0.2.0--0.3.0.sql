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
-- llm_train takes run => ... (and issue 16's dataset => ...: one definition
-- for both).  Steps logged before 0.3.0 have no stamp, so they are in no
-- model's history.
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

ALTER TABLE llm_checkpoint ADD COLUMN lineage bigint REFERENCES llm_train_lineage (id) ON DELETE SET NULL;
COMMENT ON COLUMN llm_checkpoint.lineage IS
'the history of its weights (llm_train_lineage; NULL: none), which a load continues';

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
    dataset           text,
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
COMMENT ON COLUMN llm_train_run.dataset IS 'the llm_dataset dataset it draws from';
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
                           dataset text DEFAULT current_user, run text DEFAULT NULL,
                           dtype text DEFAULT 'fp32')
    AS 'MODULE_PATHNAME', 'llm_train' LANGUAGE C;
COMMENT ON PROCEDURE llm_train(text, int, int, double precision, int, double precision,
                               double precision, double precision, bigint, int, int, int, int, int,
                               int, int, double precision, double precision, double precision, int,
                               int, text, text, text, text) IS
'train the model for steps steps on a split (default ''train'') of llm_dataset `dataset` (default: named after '
'you): each step draws batch_size '
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
'had never stopped (ERROR for settings that differ from the run''s). '
'dtype ''bf16'': mixed precision as torch.autocast(''cpu'', dtype=torch.bfloat16) runs the matmuls -- '
'their operands and results rounded to bf16, products summed in fp32 -- with fp32 weights and AdamW '
'state (README: Mixed precision); default ''fp32''.';

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
        loss := llm_train_step(p_model, tok, tgt, r.lr, r.weight_decay, r.beta1, r.beta2, r.eps, r.clip,
                               r.dtype);
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
CREATE FUNCTION llm_model_cache(OUT model text, OUT version bigint, OUT dtype text, OUT bytes bigint,
                                OUT pins int, OUT loaded_by int, OUT loaded_at timestamptz,
                                OUT last_used timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_model_cache_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_model_cache() IS
'the decoded weights in the server''s shared cache, one row per model version you may see and dtype (fp32, or '
'bf16 under pg_llm.inference_dtype): its size, how many calls use it now (pins), the process (pg_backend_pid()) '
'that decoded it, when, and when it was last used. pg_llm.shared_cache_size caps the total';
COMMENT ON FUNCTION llm_model_cache_clear() IS
'free the cached weights of the models you may see that no call uses now (they are decoded again at the next use)';
-- ---- end of issue 16 (weights)

-- ---- issue 16 (a class on one server): owners, row-level security, sharing, dataset names.
-- Every row that exists before this update becomes the property of the role
-- running ALTER EXTENSION UPDATE (a superuser): owner DEFAULT current_user is
-- filled in once for the existing rows.  Datasets get a name, the same role's
-- name: llm_train and llm_eval read that one by default, so what trained
-- before trains the same after.  The SQL below is sql/'s, in its order.
ALTER TABLE llm_model_config ADD COLUMN owner name NOT NULL DEFAULT current_user,
                             ADD COLUMN shared boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN llm_model_config.model IS
    'the model''s name, e.g. gpt2-small; llm_param.model refers to it. One owner per name in a database';
COMMENT ON COLUMN llm_model_config.owner IS
    'the role that registered it: only its owner trains it, imports into it or deletes it (90_classroom.sql)';
COMMENT ON COLUMN llm_model_config.shared IS
    'every role may read it, its parameters and its logs (llm_share); still only its owner changes it';

CREATE OR REPLACE FUNCTION llm_model_config_new_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND to_jsonb(NEW) - '{shared,owner}'::text[] = to_jsonb(OLD) - '{shared,owner}'::text[] THEN
        RETURN NEW;
    END IF;
    NEW.version := nextval('llm_param_version_seq');
    RETURN NEW;
END $$;

COMMENT ON FUNCTION llm_model_config_new_version() IS
'trigger: a new or changed llm_model_config row gets a fresh version, so cached weights reload '
'(not when only shared or owner changed)';

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

ALTER TABLE llm_tokenizer ADD COLUMN owner name NOT NULL DEFAULT current_user,
                          ADD COLUMN shared boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN llm_tokenizer.owner IS 'the role that made it: only its owner changes its vocab and merges';
COMMENT ON COLUMN llm_tokenizer.shared IS 'every role may read it and encode with it (llm_share of its model)';

ALTER TABLE llm_tensor_rt_all ADD COLUMN owner name NOT NULL DEFAULT current_user;
COMMENT ON COLUMN llm_tensor_rt_all.owner IS 'the role that recorded it: a learner reads only their own, an instructor all';
ALTER TABLE llm_tape_all ADD COLUMN owner name NOT NULL DEFAULT current_user;
COMMENT ON COLUMN llm_tape_all.owner IS 'the role that recorded it: a learner reads only their own, an instructor all';
ALTER VIEW llm_tensor_rt SET (security_invoker = true);
ALTER VIEW llm_tape SET (security_invoker = true);

CREATE FUNCTION llm_tape_forget() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    DELETE FROM llm_tape_all
    WHERE session = pg_backend_pid()
       OR session NOT IN (SELECT pid FROM pg_stat_get_activity(NULL) WHERE pid IS NOT NULL);
    DELETE FROM llm_tensor_rt_all
    WHERE session = pg_backend_pid()
       OR session NOT IN (SELECT pid FROM pg_stat_get_activity(NULL) WHERE pid IS NOT NULL);
$$;
COMMENT ON FUNCTION llm_tape_forget() IS
    'internal (the tape''s store; harmless to call): delete the llm_tape_all and llm_tensor_rt_all rows of this session''s pid and of '
    'sessions that have ended, whoever recorded them';

CREATE OR REPLACE FUNCTION llm_zero_grad(model text) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    n int;
BEGIN
    PERFORM llm_require_arg('llm_zero_grad', 'model', model IS NULL);
    PERFORM llm_require_model_owner(model);
    UPDATE llm_param p SET grad = NULL WHERE p.model = llm_zero_grad.model AND p.grad IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION llm_zero_grad(text) IS
    'forget the gradients of model''s parameters (llm_param.grad = NULL, which llm_accumulate_grads reads as 0); returns how many it cleared';

ALTER TABLE llm_dataset ADD COLUMN dataset text NOT NULL DEFAULT current_user,
                        ADD COLUMN owner name NOT NULL DEFAULT current_user,
                        ADD COLUMN shared boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN llm_dataset.split IS 'train, val, ... : which examples of the dataset a run trains or evaluates on';
COMMENT ON COLUMN llm_dataset.dataset IS
    'the dataset''s name (default: the role that made it); one owner per name in a database';
COMMENT ON COLUMN llm_dataset.owner IS 'the role that made the row: only its owner changes or deletes it';
COMMENT ON COLUMN llm_dataset.shared IS 'every role may read it (llm_share of a model trained on it)';
DROP INDEX llm_dataset_split;
CREATE INDEX llm_dataset_dataset_split ON llm_dataset (dataset, split, id);
COMMENT ON INDEX llm_dataset_dataset_split IS 'a split of a dataset in id order: what a run draws from';
DROP FUNCTION llm_dataset_from_tokens(int[], int, int, text, double precision);
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

ALTER TABLE llm_checkpoint ADD COLUMN owner name NOT NULL DEFAULT current_user;
COMMENT ON COLUMN llm_checkpoint.owner IS 'the role that saved it: only its owner reads, loads or deletes it';
ALTER VIEW llm_checkpoints SET (security_invoker = true);

DROP FUNCTION llm_dataset_from_text(text, text, int, int, text, double precision);
CREATE FUNCTION llm_dataset_from_text(model text, input text, block_size int, stride int DEFAULT NULL,
                                      split text DEFAULT 'train',
                                      val_fraction double precision DEFAULT 0,
                                      dataset text DEFAULT current_user)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    PERFORM llm_require_arg('llm_dataset_from_text', 'model', model IS NULL);
    PERFORM llm_require_arg('llm_dataset_from_text', 'input', input IS NULL);
    RETURN llm_dataset_from_tokens(llm_encode(input, model), block_size, stride, split, val_fraction, dataset);
END $$;
COMMENT ON FUNCTION llm_dataset_from_text(text, text, int, int, text, double precision, text) IS
'encode text with the model''s tokenizer and cut it into rows of llm_dataset `dataset` (default: named after you), '
'block_size tokens each (see llm_dataset_from_tokens: the last val_fraction of the tokens go to split ''val''); '
'returns the rows added';

DROP FUNCTION llm_eval(text, text, int);
CREATE FUNCTION llm_eval(model text, split text DEFAULT 'val', max_rows int DEFAULT NULL,
                         dataset text DEFAULT current_user,
                         OUT loss double precision, OUT perplexity double precision,
                         OUT tokens bigint, OUT examples bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    PERFORM llm_require_arg('llm_eval', 'model', model IS NULL);
    PERFORM llm_require_arg('llm_eval', 'split', split IS NULL);
    PERFORM llm_require_arg('llm_eval', 'dataset', dataset IS NULL);
    IF max_rows < 1 THEN
        RAISE EXCEPTION 'llm_eval: max_rows must be >= 1, got %', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- llm_loss is the mean over a row's counted targets: weigh it back by
    -- their number, so the result is the mean over every counted token.
    SELECT sum(r.loss * r.counted) / sum(r.counted), sum(r.counted), count(*)
    INTO loss, tokens, examples
    FROM (SELECT llm_loss(model, d.tokens, d.target)::double precision AS loss, c.counted
          FROM (SELECT * FROM llm_dataset d WHERE d.dataset = dataset AND d.split = split ORDER BY d.id LIMIT max_rows) d,
               LATERAL (SELECT count(*) AS counted FROM unnest(d.target) AS t WHERE t <> -100) c
          WHERE c.counted > 0) r;
    IF examples = 0 THEN
        RAISE EXCEPTION 'llm_eval: dataset "%" has no rows with targets in split "%"', dataset, split
            USING ERRCODE = 'no_data_found',
                  HINT = 'Add some with llm_dataset_from_text(model, text, block_size, val_fraction => 0.1).';
    END IF;
    perplexity := exp(loss);
END $$;
COMMENT ON FUNCTION llm_eval(text, text, int, text) IS
'the model''s mean cross-entropy (nats per token) over every counted target of a split of llm_dataset `dataset` '
'(default: named after you) '
'(the first max_rows rows by id, or all), its perplexity exp(loss), and how many tokens and rows it saw';

-- 90_classroom.sql, as it is:

-- ---- who is who ------------------------------------------------------------------

CREATE FUNCTION llm_is_instructor() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    SELECT coalesce(pg_has_role(to_regrole('llm_instructor'), 'USAGE'), false)
$$;
COMMENT ON FUNCTION llm_is_instructor() IS
'true when the current role is a member of llm_instructor (false when that role does not exist yet)';

-- ---- names: one owner each ---------------------------------------------------------

-- Row security hides another role's rows, so a learner who picks a name a
-- neighbour already uses would get a bare duplicate-key error (or none, for
-- datasets, whose name is not a key).  These triggers look at every row,
-- which is why they run as the extension's owner; they tell only who holds
-- the name.
CREATE FUNCTION llm_name_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    holder name;
BEGIN
    IF TG_TABLE_NAME = 'llm_model_config' THEN
        SELECT c.owner INTO holder FROM llm_model_config c WHERE c.model = NEW.model AND c.owner <> NEW.owner;
    ELSE
        SELECT t.owner INTO holder FROM llm_tokenizer t WHERE t.model = NEW.model AND t.owner <> NEW.owner;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION '%: the name "%" is taken: it belongs to %', TG_TABLE_NAME, NEW.model, holder
            USING ERRCODE = 'unique_violation',
                  HINT = 'Names are shared by everyone in this database: choose another '
                         '(the notebooks put yours first: pg_llm_lab.course.mine()).';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION llm_name_check() IS
'trigger on llm_model_config and llm_tokenizer: refuse a name another role owns, saying whose it is';

CREATE TRIGGER llm_model_config_name BEFORE INSERT OR UPDATE OF model, owner ON llm_model_config
    FOR EACH ROW EXECUTE FUNCTION llm_name_check();
CREATE TRIGGER llm_tokenizer_name BEFORE INSERT OR UPDATE OF model, owner ON llm_tokenizer
    FOR EACH ROW EXECUTE FUNCTION llm_name_check();

CREATE FUNCTION llm_dataset_name_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    clash record;
BEGIN
    SELECT n.dataset, d.owner INTO clash
    FROM (SELECT DISTINCT dataset, owner FROM new_rows) n
    JOIN llm_dataset d ON d.dataset = n.dataset AND d.owner <> n.owner
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'llm_dataset: the dataset name "%" is taken: it belongs to %', clash.dataset, clash.owner
            USING ERRCODE = 'unique_violation',
                  HINT = 'Names are shared by everyone in this database: choose another; '
                         'by default a dataset is named after you.';
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION llm_dataset_name_check() IS
'trigger on llm_dataset, each statement: refuse rows under a dataset name another role owns, saying whose it is';

CREATE TRIGGER llm_dataset_name_ins AFTER INSERT ON llm_dataset
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_dataset_name_check();
CREATE TRIGGER llm_dataset_name_upd AFTER UPDATE ON llm_dataset
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_dataset_name_check();

-- An instructor may share or unshare anyone's model, tokenizer and dataset
-- rows (the policies instructors_share below), and change nothing else.
CREATE FUNCTION llm_only_sharing() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    IF OLD.owner <> current_user AND row_security_active(TG_RELID)
       AND to_jsonb(NEW) - 'shared' - 'version' IS DISTINCT FROM to_jsonb(OLD) - 'shared' - 'version' THEN
        RAISE EXCEPTION '%: a row of % may only be shared or unshared by others than its owner',
            TG_TABLE_NAME, OLD.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION llm_only_sharing() IS
'trigger: a role that updates a row it does not own (an instructor) may change its shared flag, nothing else';

CREATE TRIGGER llm_model_config_only_sharing BEFORE UPDATE ON llm_model_config
    FOR EACH ROW EXECUTE FUNCTION llm_only_sharing();
CREATE TRIGGER llm_tokenizer_only_sharing BEFORE UPDATE ON llm_tokenizer
    FOR EACH ROW EXECUTE FUNCTION llm_only_sharing();
CREATE TRIGGER llm_dataset_only_sharing BEFORE UPDATE ON llm_dataset
    FOR EACH ROW EXECUTE FUNCTION llm_only_sharing();

-- ---- the policies ------------------------------------------------------------------
--
-- its_owner (every command): the rows the current role owns.
-- readers (SELECT): what is shared, and everything for an instructor.
-- instructors_share (UPDATE): an instructor flips `shared` (llm_only_sharing).
-- (SELECT llm_is_instructor()) is evaluated once per statement, not per row.

ALTER TABLE llm_model_config ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_model_config USING (owner = current_user);
CREATE POLICY readers ON llm_model_config FOR SELECT USING (shared OR (SELECT llm_is_instructor()));
CREATE POLICY instructors_share ON llm_model_config FOR UPDATE USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_model_config IS 'a role reads and changes the models it registered';
COMMENT ON POLICY readers ON llm_model_config IS 'everyone reads a shared model; an instructor reads all';
COMMENT ON POLICY instructors_share ON llm_model_config IS 'an instructor may share anyone''s model (only that)';

ALTER TABLE llm_tokenizer ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_tokenizer USING (owner = current_user);
CREATE POLICY readers ON llm_tokenizer FOR SELECT USING (shared OR (SELECT llm_is_instructor()));
CREATE POLICY instructors_share ON llm_tokenizer FOR UPDATE USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_tokenizer IS 'a role reads and changes the tokenizers it made';
COMMENT ON POLICY readers ON llm_tokenizer IS 'everyone reads a shared tokenizer; an instructor reads all';
COMMENT ON POLICY instructors_share ON llm_tokenizer IS 'an instructor may share anyone''s tokenizer (only that)';

ALTER TABLE llm_dataset ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_dataset USING (owner = current_user);
CREATE POLICY readers ON llm_dataset FOR SELECT USING (shared OR (SELECT llm_is_instructor()));
CREATE POLICY instructors_share ON llm_dataset FOR UPDATE USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_dataset IS 'a role reads and changes the dataset rows it made';
COMMENT ON POLICY readers ON llm_dataset IS 'everyone reads a shared dataset; an instructor reads all';
COMMENT ON POLICY instructors_share ON llm_dataset IS 'an instructor may share anyone''s dataset (only that)';

-- A model's parameters, logs and gradient statistics are the model's owner's,
-- and readable by whoever reads the model.
ALTER TABLE llm_param ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_param
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_param.model AND c.owner = current_user));
CREATE POLICY readers ON llm_param FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_param.model));
COMMENT ON POLICY its_owner ON llm_param IS 'the model''s owner reads and changes its parameters';
COMMENT ON POLICY readers ON llm_param IS 'whoever reads the model''s llm_model_config row reads its parameters';

ALTER TABLE llm_train_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_train_log
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_log.model AND c.owner = current_user));
CREATE POLICY readers ON llm_train_log FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_log.model));
COMMENT ON POLICY its_owner ON llm_train_log IS 'the model''s owner reads and writes its log';
COMMENT ON POLICY readers ON llm_train_log IS 'whoever reads the model reads its log';

ALTER TABLE llm_train_lineage ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_train_lineage
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_lineage.model AND c.owner = current_user));
CREATE POLICY readers ON llm_train_lineage FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_lineage.model));
COMMENT ON POLICY its_owner ON llm_train_lineage IS 'the model''s owner reads and writes the history of its weights';
COMMENT ON POLICY readers ON llm_train_lineage IS 'whoever reads the model reads the history of its weights';

ALTER TABLE llm_train_run ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_train_run
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_run.model AND c.owner = current_user));
CREATE POLICY readers ON llm_train_run FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_run.model));
COMMENT ON POLICY its_owner ON llm_train_run IS 'the model''s owner reads and writes its named runs';
COMMENT ON POLICY readers ON llm_train_run IS 'whoever reads the model reads its named runs';

ALTER TABLE llm_grad_stats ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_grad_stats
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_grad_stats.model AND c.owner = current_user));
CREATE POLICY readers ON llm_grad_stats FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_grad_stats.model));
COMMENT ON POLICY its_owner ON llm_grad_stats IS 'the model''s owner reads and writes its gradient statistics';
COMMENT ON POLICY readers ON llm_grad_stats IS 'whoever reads the model reads its gradient statistics';

ALTER TABLE llm_bpe_vocab ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_bpe_vocab
    USING (EXISTS (SELECT FROM llm_tokenizer t WHERE t.model = llm_bpe_vocab.model AND t.owner = current_user));
CREATE POLICY readers ON llm_bpe_vocab FOR SELECT
    USING (EXISTS (SELECT FROM llm_tokenizer t WHERE t.model = llm_bpe_vocab.model));
COMMENT ON POLICY its_owner ON llm_bpe_vocab IS 'the tokenizer''s owner reads and changes its vocabulary';
COMMENT ON POLICY readers ON llm_bpe_vocab IS 'whoever reads the tokenizer reads its vocabulary';

ALTER TABLE llm_bpe_merges ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_bpe_merges
    USING (EXISTS (SELECT FROM llm_tokenizer t WHERE t.model = llm_bpe_merges.model AND t.owner = current_user));
CREATE POLICY readers ON llm_bpe_merges FOR SELECT
    USING (EXISTS (SELECT FROM llm_tokenizer t WHERE t.model = llm_bpe_merges.model));
COMMENT ON POLICY its_owner ON llm_bpe_merges IS 'the tokenizer''s owner reads and changes its merges';
COMMENT ON POLICY readers ON llm_bpe_merges IS 'whoever reads the tokenizer reads its merges';

-- Checkpoints stay private (an instructor reads them): llm_share shares a
-- model's current weights, not its history.
ALTER TABLE llm_checkpoint ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_checkpoint USING (owner = current_user);
CREATE POLICY readers ON llm_checkpoint FOR SELECT USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_checkpoint IS 'a role reads, loads and deletes the checkpoints it saved';
COMMENT ON POLICY readers ON llm_checkpoint IS 'an instructor reads every checkpoint';

ALTER TABLE llm_checkpoint_param ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_checkpoint_param
    USING (EXISTS (SELECT FROM llm_checkpoint k
                   WHERE k.id = llm_checkpoint_param.checkpoint AND k.owner = current_user));
CREATE POLICY readers ON llm_checkpoint_param FOR SELECT
    USING (EXISTS (SELECT FROM llm_checkpoint k WHERE k.id = llm_checkpoint_param.checkpoint));
COMMENT ON POLICY its_owner ON llm_checkpoint_param IS 'the checkpoint''s owner reads and writes its parameters';
COMMENT ON POLICY readers ON llm_checkpoint_param IS 'whoever reads the checkpoint reads its parameters';

-- The tape: a session's own, and an instructor's to read.
ALTER TABLE llm_tape_all ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_tape_all USING (owner = current_user);
CREATE POLICY readers ON llm_tape_all FOR SELECT USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_tape_all IS 'a role reads and writes the tapes it recorded';
COMMENT ON POLICY readers ON llm_tape_all IS 'an instructor reads every session''s tape';

ALTER TABLE llm_tensor_rt_all ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_tensor_rt_all USING (owner = current_user);
CREATE POLICY readers ON llm_tensor_rt_all FOR SELECT USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_tensor_rt_all IS 'a role reads and writes the tapes it recorded';
COMMENT ON POLICY readers ON llm_tensor_rt_all IS 'an instructor reads every session''s tape';

-- ---- sharing --------------------------------------------------------------------------

CREATE FUNCTION llm_share(model text, shared boolean DEFAULT true)
RETURNS TABLE (kind text, name text)
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    p_model text := model;
    holder name;
    datasets text[];
BEGIN
    PERFORM llm_require_arg('llm_share', 'model', p_model IS NULL);
    PERFORM llm_require_arg('llm_share', 'shared', shared IS NULL);
    SELECT c.owner INTO holder FROM llm_model_config c WHERE c.model = p_model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'llm_share: unknown model "%"', p_model
            USING ERRCODE = 'undefined_object', HINT = 'Models are registered in llm_model_config.';
    END IF;
    IF holder <> current_user AND row_security_active('llm_model_config') AND NOT llm_is_instructor() THEN
        RAISE EXCEPTION 'llm_share: model "%" belongs to %: only its owner or an instructor may share it',
            p_model, holder
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- its datasets: the one named like it, and those its logged steps drew from
    SELECT array_agg(DISTINCT d.dataset) INTO datasets
    FROM llm_dataset d
    WHERE d.owner = holder
      AND (d.dataset = p_model
           OR d.id IN (SELECT b FROM llm_train_log l, unnest(l.batch) AS b WHERE l.model = p_model));

    UPDATE llm_model_config c SET shared = shared WHERE c.model = p_model AND c.shared <> shared;
    RETURN QUERY SELECT 'model', p_model;
    UPDATE llm_tokenizer t SET shared = shared WHERE t.model = p_model AND t.owner = holder AND t.shared <> shared;
    RETURN QUERY SELECT 'tokenizer', t.model FROM llm_tokenizer t WHERE t.model = p_model AND t.owner = holder;
    UPDATE llm_dataset d SET shared = shared
    WHERE d.dataset = ANY (datasets) AND d.owner = holder AND d.shared <> shared;
    RETURN QUERY SELECT 'dataset', unnest(datasets);
END $$;
COMMENT ON FUNCTION llm_share(text, boolean) IS
'make a model, its tokenizer (of the same name) and its datasets (the one named like it, and those its logged '
'training steps drew from) readable by every role (shared => false: private again); returns what it '
'changed. Read-only: only the owner trains, imports into or deletes them. The model''s owner or an '
'instructor may call it';

-- ---- the class ------------------------------------------------------------------------

CREATE FUNCTION llm_require_superuser(p_function text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM llm_require_arg('llm_require_superuser', 'p_function', p_function IS NULL);
    IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION '%: only a superuser may run it', p_function
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;
COMMENT ON FUNCTION llm_require_superuser(text) IS
'internal: raise an error (42501) unless the current role is a superuser';

-- What a learner's sessions get unless the instructor changes it: settings of
-- the role llm_learner.  PostgreSQL applies ALTER ROLE ... SET to the role
-- that logs in, not to the groups it is in, so llm_classroom_init and
-- llm_classroom_add_learner copy llm_learner's settings to every learner.
--   ALTER ROLE llm_learner SET pg_llm.threads = 2;  SELECT llm_classroom_init();
CREATE FUNCTION llm_classroom_defaults(OUT setting text, OUT value text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    VALUES ('pg_llm.threads', '1'),                         -- one core each: 30 learners, not 30 x cores
           ('statement_timeout', '10min'),                  -- a runaway query ends
           ('idle_in_transaction_session_timeout', '30min'), -- a forgotten BEGIN releases its locks
           ('pg_llm.max_tape_rows', '20000')                -- a tape in mode full stays bounded
$$;
COMMENT ON FUNCTION llm_classroom_defaults() IS
'the settings llm_classroom_init gives the role llm_learner when it has none of that name yet';

CREATE FUNCTION llm_classroom_apply_settings(learner name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    entry text;
BEGIN
    PERFORM llm_require_superuser('llm_classroom_apply_settings');
    PERFORM llm_require_arg('llm_classroom_apply_settings', 'learner', learner IS NULL);
    FOR entry IN SELECT unnest(s.setconfig) FROM pg_db_role_setting s
                 WHERE s.setrole = 'llm_learner'::regrole AND s.setdatabase = 0
    LOOP
        EXECUTE format('ALTER ROLE %I SET %s = %L', learner, split_part(entry, '=', 1),
                       substr(entry, length(split_part(entry, '=', 1)) + 2));
    END LOOP;
END $$;
COMMENT ON FUNCTION llm_classroom_apply_settings(name) IS
'internal (llm_classroom_init, llm_classroom_add_learner): copy the settings of the role llm_learner '
'(ALTER ROLE llm_learner SET ...) to a learner''s own role';

CREATE FUNCTION llm_classroom_init() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    schema name := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'pg_llm');
    member record;
    d record;
BEGIN
    PERFORM llm_require_superuser('llm_classroom_init');
    PERFORM llm_info();     -- loads the library, so that its settings are known to ALTER ROLE
    IF to_regrole('llm_learner') IS NULL THEN
        CREATE ROLE llm_learner NOLOGIN;
    END IF;
    IF to_regrole('llm_instructor') IS NULL THEN
        CREATE ROLE llm_instructor NOLOGIN;
    END IF;
    COMMENT ON ROLE llm_learner IS 'pg_llm: its members train, share and read models of their own (llm_classroom_init)';
    COMMENT ON ROLE llm_instructor IS 'pg_llm: its members read every learner''s rows and may share any model';
    IF NOT pg_has_role('llm_instructor', 'llm_learner', 'MEMBER') THEN
        GRANT llm_learner TO llm_instructor;
    END IF;
    IF NOT pg_has_role('llm_instructor', 'pg_read_all_stats', 'MEMBER') THEN
        GRANT pg_read_all_stats TO llm_instructor;     -- what every session runs (pg_stat_activity)
    END IF;

    EXECUTE format('GRANT USAGE ON SCHEMA %I TO llm_learner', schema);
    FOR d IN SELECT c.oid::regclass AS rel, c.relkind
             FROM pg_depend dep JOIN pg_class c ON c.oid = dep.objid
             WHERE dep.refclassid = 'pg_extension'::regclass AND dep.classid = 'pg_class'::regclass
               AND dep.deptype = 'e' AND dep.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_llm')
               AND c.relkind IN ('r', 'v', 'S')
    LOOP
        EXECUTE format(CASE d.relkind WHEN 'r' THEN 'GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO llm_learner'
                                      WHEN 'v' THEN 'GRANT SELECT ON %s TO llm_learner'
                                      WHEN 'S' THEN 'GRANT USAGE, SELECT ON SEQUENCE %s TO llm_learner'
                       END, d.rel);
    END LOOP;

    FOR d IN SELECT * FROM llm_classroom_defaults() LOOP
        IF NOT EXISTS (SELECT FROM pg_db_role_setting s, unnest(s.setconfig) AS c
                       WHERE s.setrole = 'llm_learner'::regrole AND s.setdatabase = 0
                         AND split_part(c, '=', 1) = d.setting) THEN
            EXECUTE format('ALTER ROLE llm_learner SET %s = %L', d.setting, d.value);
        END IF;
    END LOOP;
    FOR member IN SELECT r.rolname FROM pg_roles r
                  WHERE r.rolcanlogin AND pg_has_role(r.oid, 'llm_learner', 'MEMBER')
                    AND NOT pg_has_role(r.oid, 'llm_instructor', 'MEMBER')
    LOOP
        PERFORM llm_classroom_apply_settings(member.rolname);
    END LOOP;
END $$;
COMMENT ON FUNCTION llm_classroom_init() IS
'make this database ready for a class (superuser; run it again any time, in each database the class uses): the '
'roles llm_learner and llm_instructor, their privileges on pg_llm''s tables here (and pg_read_all_stats for '
'instructors), and llm_learner''s settings (llm_classroom_defaults, or the instructor''s own) copied to every learner';

CREATE FUNCTION llm_classroom_add_learner(learner name, instructor boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM llm_require_superuser('llm_classroom_add_learner');
    PERFORM llm_require_arg('llm_classroom_add_learner', 'learner', learner IS NULL);
    PERFORM llm_require_arg('llm_classroom_add_learner', 'instructor', instructor IS NULL);
    IF to_regrole('llm_learner') IS NULL THEN
        PERFORM llm_classroom_init();
    END IF;
    IF to_regrole(quote_ident(learner)) IS NULL THEN
        EXECUTE format('CREATE ROLE %I LOGIN', learner);
    ELSIF (SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = learner) THEN
        RAISE EXCEPTION 'llm_classroom_add_learner: role "%" bypasses row-level security (a superuser)', learner
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A learner or an instructor must be an ordinary role.';
    END IF;
    EXECUTE format('GRANT %I TO %I', CASE WHEN instructor THEN 'llm_instructor' ELSE 'llm_learner' END, learner);
    -- a schema of their own, first on the default search_path ("$user"), for the tables they make
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', learner, learner);
    IF NOT instructor THEN
        PERFORM llm_classroom_apply_settings(learner);
    END IF;
END $$;
COMMENT ON FUNCTION llm_classroom_add_learner(name, boolean) IS
'make a LOGIN role (if missing) a learner (or, with instructor, an instructor), give it a schema of its own '
'and the class''s settings; superuser. Its password: ALTER ROLE ... PASSWORD, or pg-llm-lab classroom add-learner';

-- ---- end of issue 16 (a class on one server)

-- ---- issue 17 (a learner's work survives), 90_backup.sql: pg_dump keeps the user data.
SELECT pg_extension_config_dump('llm_model_config', 'WHERE model <> ''gpt2-small''');
SELECT pg_extension_config_dump('llm_param', '');
SELECT pg_extension_config_dump('llm_param_version_seq', '');
SELECT pg_extension_config_dump('llm_tokenizer', '');
SELECT pg_extension_config_dump('llm_bpe_vocab', '');
SELECT pg_extension_config_dump('llm_bpe_merges', '');
SELECT pg_extension_config_dump('llm_tokenizer_version_seq', '');
SELECT pg_extension_config_dump('llm_dataset', '');
SELECT pg_extension_config_dump('llm_dataset_id_seq', '');
SELECT pg_extension_config_dump('llm_train_log', '');
SELECT pg_extension_config_dump('llm_train_log_id_seq', '');
SELECT pg_extension_config_dump('llm_grad_stats', '');
SELECT pg_extension_config_dump('llm_checkpoint', '');
SELECT pg_extension_config_dump('llm_checkpoint_id_seq', '');
SELECT pg_extension_config_dump('llm_checkpoint_param', '');
SELECT pg_extension_config_dump('llm_train_lineage', '');
SELECT pg_extension_config_dump('llm_train_lineage_id_seq', '');
SELECT pg_extension_config_dump('llm_train_run', '');
-- ---- end of issue 17 (pg_dump)

-- ---- issue 17 (a learner's work survives), 80_train.sql and 40_import_export.sql: what a learner is
-- told is saved is saved.
-- Checkpoints and imports call this (and, in C, the training write-backs and
-- the tokenizers' stores), so that they survive a crash also where the server
-- runs synchronous_commit = off (the lab's server does: a training step's log
-- rows need not wait for the disk).
CREATE FUNCTION llm_commit_durably() RETURNS void
    AS 'MODULE_PATHNAME', 'llm_commit_durably_sql' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_commit_durably() IS
'make the calling transaction''s COMMIT wait until its WAL is on disk (SET LOCAL synchronous_commit = on) '
'where synchronous_commit is off';
CREATE OR REPLACE FUNCTION llm_import_tensors(p_model text, p_path text, p_format text) RETURNS int
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
-- ---- end of issue 17 (durable commits)

-- ---- issue 17 (a learner's work survives), 00_tensor.sql: a tensor of more than 8388608 values is
-- written as base64 text, so that the rows pg_dump writes of GPT-2 small stay under 1 GB.
COMMENT ON FUNCTION tensor_in(cstring) IS
    'text input of tensor: nested lists such as ''[[1,2,3],[4,5,6]]'' give a [2,3] tensor (lists of a level have one length); '
    'or ''base64:[2,3]:...'', the float32 values little-endian in base64, as tensor_out writes a big tensor';
COMMENT ON FUNCTION tensor_out(tensor) IS
    'text output of tensor: one bracketed list per dimension, e.g. [[1,2,3],[4,5,6]] for a [2,3] tensor; beyond '
    '8388608 values base64:[shape]:<the float32 values little-endian, in base64> (a row pg_dump writes stays under 1 GB)';
-- ---- end of issue 17 (tensor text)

-- ---- issue 18 (bf16 training): llm_train and llm_train_step take dtype ('fp32' or
-- 'bf16'); llm_train_log and llm_train_run say which (llm_train's and llm_replay's
-- new definitions are in issue 17's block above, its one definition).
ALTER TABLE llm_train_log ADD COLUMN dtype text NOT NULL DEFAULT 'fp32';
COMMENT ON COLUMN llm_train_log.dtype IS
'what the step computed in: ''fp32'', or ''bf16'' mixed precision (llm_train(..., dtype => ''bf16''))';
ALTER TABLE llm_train_run ADD COLUMN dtype text NOT NULL DEFAULT 'fp32';
COMMENT ON COLUMN llm_train_run.dtype IS 'what it computes in: ''fp32'' or ''bf16'' (mixed precision)';
DROP FUNCTION llm_train_step(text, int[], int[], double precision, double precision,
                             double precision, double precision, double precision,
                             double precision);
-- ---- end of issue 18 (bf16 training)

-- ---- new functions of sql/*.sql: written by tools/gen_upgrade_functions.py, do not edit
CREATE FUNCTION llm_train_step(model text, tokens int[], targets int[], lr double precision,
                               weight_decay double precision DEFAULT 0.01,
                               beta1 double precision DEFAULT 0.9,
                               beta2 double precision DEFAULT 0.999,
                               eps double precision DEFAULT 1e-8,
                               clip double precision DEFAULT NULL,
                               dtype text DEFAULT 'fp32')
RETURNS real
    AS 'MODULE_PATHNAME', 'llm_train_step' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_train_step(text, int[], int[], double precision, double precision,
                                   double precision, double precision, double precision,
                                   double precision, text) IS
'one training step on a batch (tokens, targets: int[] or int[][] [B][T], -100 ignored): forward, mean '
'cross-entropy, backward, clip_grad_norm_(clip) unless clip is NULL, AdamW (decay on 2-D tensors), '
'written back to llm_param (data, grad, m, v, step) in one UPDATE with a row of llm_train_log and '
'llm_grad_stats; returns the loss before the update. dtype ''bf16'': mixed precision as llm_train''s';

-- ---- end of new functions
