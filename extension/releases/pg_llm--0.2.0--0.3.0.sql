-- pg_llm 0.2.0 -> 0.3.0: ALTER EXTENSION pg_llm UPDATE runs this in one
-- transaction.  Every model, dataset, log and checkpoint is kept: tables are
-- ALTERed, never dropped and recreated; functions are CREATE OR REPLACEd (or
-- dropped first when their arguments or result type change).
--
-- It must turn a 0.2.0 catalog into exactly what pg_llm--0.3.0.sql (sql/*.sql)
-- creates.  tests/test_upgrade.py checks that and names every object that
-- differs: when you change sql/*.sql, add the same change here, in the order
-- of sql/'s files (see releases/README.md).  Each change is one commented
-- block, so that branches adding to this file merge cleanly.
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
