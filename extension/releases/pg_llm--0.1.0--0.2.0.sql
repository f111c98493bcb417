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

-- 75_autograd.sql: training steps record on the tape too
COMMENT ON FUNCTION llm_autograd_mode(text) IS
    'set this session''s recording mode: off, meta (ops and shapes) or full (also values, for llm_backprop); returns it. '
    'Recording covers the SQL ops, llm_logits/llm_loss and each training step (its batch''s forward). '
    'While recording, parallel query is off for the session (a worker''s tape would be lost)';
