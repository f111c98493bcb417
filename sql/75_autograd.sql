-- pg_llm: the autograd tape (extension/src/autograd/).
--
-- SELECT llm_autograd_mode('full') makes every tensor op, and llm_loss /
-- llm_logits, record itself.  At the end of each statement the session's
-- tape is written to llm_tape (one row per op) and llm_tensor_rt (one row
-- per tensor), views of this session's rows of llm_tape_all and
-- llm_tensor_rt_all, so it can be queried, joined and plotted (from another
-- session too, through the _all tables and the session's pid).  llm_backprop()
-- then fills llm_tensor_rt.grad, and llm_accumulate_grads(model) adds the
-- gradients of the parameters into llm_param.grad.

-- The mode is a setting of the session (pg_llm.autograd_mode), not a table
-- row: the ops read it from a C variable, so with mode off they pay one
-- comparison and no catalog lookup; each session records its own tape.
-- (Before the session has loaded the library the setting does not exist
-- yet, and no op can have recorded: that reads as off.)
CREATE VIEW llm_autograd_mode AS
    SELECT coalesce(current_setting('pg_llm.autograd_mode', true), 'off') AS mode;
COMMENT ON VIEW llm_autograd_mode IS
    'this session''s recording mode (one row): off, meta or full; set it with SELECT llm_autograd_mode(mode)';
COMMENT ON COLUMN llm_autograd_mode.mode IS
    'off: ops record nothing; meta: each op records op, inputs, output, shape, attributes; full: also every value, which llm_backprop() needs';

CREATE FUNCTION llm_autograd_mode(mode text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM llm_require_arg('llm_autograd_mode', 'mode', mode IS NULL);
    IF mode NOT IN ('off', 'meta', 'full') THEN
        RAISE EXCEPTION 'llm_autograd_mode: unknown mode "%"', mode
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The modes are off, meta and full.';
    END IF;
    PERFORM set_config('pg_llm.autograd_mode', mode, false);
    -- A parallel worker's ops would record on a tape that dies with it.
    IF mode = 'off' THEN
        RESET max_parallel_workers_per_gather;
    ELSE
        PERFORM set_config('max_parallel_workers_per_gather', '0', false);
    END IF;
    RETURN mode;
END $$;
COMMENT ON FUNCTION llm_autograd_mode(text) IS
    'set this session''s recording mode: off, meta (ops and shapes) or full (also values, for llm_backprop); returns it. '
    'Recording covers the SQL ops, llm_logits/llm_loss and each training step (its batch''s forward). '
    'While recording, parallel query is off for the session (a worker''s tape would be lost)';

-- Every session's tape: llm_tensor_rt_all and llm_tape_all, keyed by (session, id).  A class
-- shares one server, so a session's store replaces only its own rows (and those of sessions that
-- have ended); the views llm_tensor_rt and llm_tape show the rows of the session reading them.
CREATE TABLE llm_tensor_rt_all (
    id          int NOT NULL,
    shape       int[] NOT NULL,
    data        tensor,
    grad        tensor,
    param_name  text,
    produced_by int,
    session     int NOT NULL DEFAULT pg_backend_pid(),
    owner       name NOT NULL DEFAULT current_user,
    PRIMARY KEY (session, id)
);
ALTER TABLE llm_tensor_rt_all ALTER COLUMN data SET STORAGE EXTERNAL,
                              ALTER COLUMN grad SET STORAGE EXTERNAL;
COMMENT ON TABLE llm_tensor_rt_all IS
    'the tensors of every session''s tape (runtime tensors), one row each; llm_tensor_rt shows your session''s';
COMMENT ON COLUMN llm_tensor_rt_all.session IS 'the process id (pg_backend_pid()) of the session that recorded it';
COMMENT ON COLUMN llm_tensor_rt_all.owner IS 'the role that recorded it: a learner reads only their own, an instructor all';
COMMENT ON COLUMN llm_tensor_rt_all.id IS 'as llm_tensor_rt.id';
COMMENT ON COLUMN llm_tensor_rt_all.shape IS 'as llm_tensor_rt.shape';
COMMENT ON COLUMN llm_tensor_rt_all.data IS 'as llm_tensor_rt.data';
COMMENT ON COLUMN llm_tensor_rt_all.grad IS 'as llm_tensor_rt.grad';
COMMENT ON COLUMN llm_tensor_rt_all.param_name IS 'as llm_tensor_rt.param_name';
COMMENT ON COLUMN llm_tensor_rt_all.produced_by IS 'as llm_tensor_rt.produced_by';

CREATE VIEW llm_tensor_rt WITH (security_invoker = true) AS
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

CREATE TABLE llm_tape_all (
    id      int NOT NULL,
    op      text NOT NULL,
    inputs  int[] NOT NULL,
    output  int NOT NULL,
    shape   int[] NOT NULL,
    attrs   jsonb NOT NULL DEFAULT '{}',
    session int NOT NULL DEFAULT pg_backend_pid(),
    owner   name NOT NULL DEFAULT current_user,
    PRIMARY KEY (session, id)
);
COMMENT ON TABLE llm_tape_all IS
    'the ops of every session''s tape, one row each; llm_tape shows your session''s';
COMMENT ON COLUMN llm_tape_all.session IS 'the process id (pg_backend_pid()) of the session that recorded it';
COMMENT ON COLUMN llm_tape_all.owner IS 'the role that recorded it: a learner reads only their own, an instructor all';
COMMENT ON COLUMN llm_tape_all.id IS 'as llm_tape.id';
COMMENT ON COLUMN llm_tape_all.op IS 'as llm_tape.op';
COMMENT ON COLUMN llm_tape_all.inputs IS 'as llm_tape.inputs';
COMMENT ON COLUMN llm_tape_all.output IS 'as llm_tape.output';
COMMENT ON COLUMN llm_tape_all.shape IS 'as llm_tape.shape';
COMMENT ON COLUMN llm_tape_all.attrs IS 'as llm_tape.attrs';

CREATE VIEW llm_tape WITH (security_invoker = true) AS
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

-- A fresh tape replaces the rows of this session's pid and of sessions that
-- have ended (a pid no backend has any more): they are nobody's tape now,
-- whoever recorded them, and row-level security would hide another role's
-- from the session that must clear them -- so this runs as the extension's
-- owner.  It deletes nothing a live session could still read as its own.
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

CREATE FUNCTION llm_tensor_rt_leaf(t tensor, param_name text DEFAULT NULL) RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_tensor_rt_leaf_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_tensor_rt_leaf(tensor, text) IS
    't unchanged; while recording, t becomes a new leaf of the tape named param_name (e.g. a llm_param.name), '
    'which the ops that take t afterwards link to and llm_accumulate_grads finds';

CREATE FUNCTION llm_backprop(root int DEFAULT NULL, seed tensor DEFAULT NULL) RETURNS int
    AS 'MODULE_PATHNAME', 'llm_backprop_sql' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_backprop(int, tensor) IS
    'reverse mode over the tape (recorded in mode full): d(root)/d(every tensor) into llm_tensor_rt.grad. '
    'root: a llm_tensor_rt.id, default the last op''s output; it must be a scalar unless seed (d(loss)/d(root), '
    'the root''s shape) is given. Returns how many tensors got a gradient';

CREATE FUNCTION llm_accumulate_grads(model text) RETURNS int
    AS 'MODULE_PATHNAME', 'llm_accumulate_grads_sql' LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_accumulate_grads(text) IS
    'llm_param.grad += the tape''s gradient of every leaf whose param_name is a parameter of model (NULL grad counts as 0); '
    'returns how many parameters it updated';

CREATE FUNCTION llm_zero_grad(model text) RETURNS int
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

CREATE FUNCTION llm_prune_autograd_state() RETURNS void
    AS 'MODULE_PATHNAME', 'llm_prune_autograd_state_sql' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_prune_autograd_state() IS
    'forget this session''s tape and empty llm_tape and llm_tensor_rt (this session''s rows)';
