-- pg_llm 0.2.0 -> 0.3.0: ALTER EXTENSION pg_llm UPDATE runs this in one
-- transaction.  Every model, dataset, log and checkpoint is kept: tables are
-- ALTERed, never dropped and recreated; functions are CREATE OR REPLACEd (or
-- dropped first when their arguments or result type change).
--
-- It must turn a 0.2.0 catalog into exactly what pg_llm--0.3.0.sql (sql/*.sql)
-- creates.  tests/test_upgrade.py checks that and names every object that
-- differs: when you change sql/*.sql, add the same change here, in the order
-- of sql/'s files (see releases/README.md).
\echo Use "ALTER EXTENSION pg_llm UPDATE" to load this file. \quit

-- 75_autograd.sql: one tape per session.  The tables become llm_tensor_rt_all and
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
