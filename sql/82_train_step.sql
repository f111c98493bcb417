-- pg_llm: training steps -- the batched forward and fused backward
-- (gpt2/forward.c, gpt2/backward.c), one step from SQL (train/step.c), a run in one
-- procedure call (train/loop.c), and the replay of logged steps.
--
--   SELECT * FROM llm_gradients('lab', tokens, targets);          -- nothing written
--   SELECT llm_train_step('lab', tokens, targets, lr => 6e-4, clip => 1.0);
--   CALL llm_train('lab', steps => 1000, batch_size => 8, lr => 6e-4, warmup => 100);
--   SELECT llm_replay('lab', checkpoint => 3, to_step => 250);

CREATE FUNCTION llm_gradients(model text, tokens int[], targets int[])
RETURNS TABLE (name text, grad tensor)
    AS 'MODULE_PATHNAME', 'llm_gradients' LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 150;
COMMENT ON FUNCTION llm_gradients(text, int[], int[]) IS
'the gradient of every parameter of the model for a batch (tokens and targets: int[] of one sequence '
'or int[][] [B][T]; target -100: no loss there): d(mean cross-entropy)/d(weights), as loss.backward() '
'computes it; nothing is written';

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
    dtype             text NOT NULL DEFAULT 'fp32',
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
COMMENT ON COLUMN llm_train_run.dtype IS 'what it computes in: ''fp32'' or ''bf16'' (mixed precision)';

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

CREATE FUNCTION llm_replay(model text, checkpoint bigint, to_step int) RETURNS int
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
