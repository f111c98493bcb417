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
                               clip double precision DEFAULT NULL)
RETURNS real
    AS 'MODULE_PATHNAME', 'llm_train_step' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_train_step(text, int[], int[], double precision, double precision,
                                   double precision, double precision, double precision,
                                   double precision) IS
'one training step on a batch (tokens, targets: int[] or int[][] [B][T], -100 ignored): forward, mean '
'cross-entropy, backward, clip_grad_norm_(clip) unless clip is NULL, AdamW (decay on 2-D tensors), '
'written back to llm_param (data, grad, m, v, step) in one UPDATE with a row of llm_train_log and '
'llm_grad_stats; returns the loss before the update';

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
                           dataset text DEFAULT current_user)
    AS 'MODULE_PATHNAME', 'llm_train' LANGUAGE C;
COMMENT ON PROCEDURE llm_train(text, int, int, double precision, int, double precision,
                               double precision, double precision, bigint, int, int, int, int, int,
                               int, int, double precision, double precision, double precision, int,
                               int, text, text) IS
'train the model for steps steps on a split (default ''train'') of llm_dataset `dataset` (default: named after '
'you): each step draws batch_size '
'examples with a generator seeded by (seed, llm_param.step), runs forward, backward, '
'clip_grad_norm_(clip) (NULL: none) and AdamW (lr: linear warmup over warmup steps, then a cosine '
'down to min_lr, default lr/10, at decay_steps, default steps), and COMMITs its rows of '
'llm_train_log and llm_grad_stats; the weights and AdamW state stay in memory and are written back '
'to llm_param every save_every steps and at the end (a cancel leaves the last write-back). '
'grad_workers: threads of the forward and backward; optimizer_workers: threads of clipping and AdamW '
'(NULL: pg_llm.threads). n_layer, n_head, d, vocab default to the model''s and must agree with it. '
'A NOTICE every notice_every steps (0: none). Results are bit-identical at any thread count.';

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
    -- the latest logged run of each step, chosen before the replay logs its own
    SELECT array_agg(l.id ORDER BY l.step) INTO rows
    FROM (SELECT DISTINCT ON (g.step) g.id, g.step FROM llm_train_log g
          WHERE g.model = p_model AND g.step > from_step AND g.step <= to_step
          ORDER BY g.step, g.id DESC) l;
    IF coalesce(cardinality(rows), 0) <> to_step - from_step THEN
        RAISE EXCEPTION 'llm_replay: llm_train_log of model "%" has % of the % steps % .. %',
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
'restore checkpoint into the model, then re-run the logged steps after it up to to_step (the latest '
'logged run of each step: its batch from llm_dataset or its tokens, its lr and AdamW settings), one '
'llm_train_step each: the weights come out bit for bit as they were; returns the steps replayed';
