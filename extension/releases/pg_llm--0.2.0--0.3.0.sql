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
