-- Training: examples cut from a token stream, the learning-rate schedule,
-- AdamW steps on the gradients in llm_param (written back in one UPDATE,
-- logged), checkpoints, and the errors bad input gets.
\set SHOW_CONTEXT never

-- llm_dataset: blocks of tokens and the tokens that follow them
SELECT llm_dataset_from_tokens('{10,11,12,13,14,15,16,17,18,19}', 4, 3, 'regress');
SELECT tokens, target FROM llm_dataset WHERE split = 'regress' ORDER BY id;
SELECT llm_dataset_from_tokens('{1,2,3}', 3, split => 'regress');
SELECT llm_dataset_from_tokens('{1,2,3}', 1, 0, 'regress');
DELETE FROM llm_dataset WHERE split = 'regress';

-- nanoGPT's schedule: warmup to lr, cosine down to min_lr, then min_lr
SELECT i, round(llm_lr(i, 1.0, 2, 6, 0.1)::numeric, 6) AS lr FROM generate_series(0, 8) i;
SELECT llm_lr(0, 1.0, 5, 5);

-- AdamW on hand-made gradients
INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)
VALUES ('train_tiny', 1, 2, 4, 8, 5);
SELECT llm_init('train_tiny', 3);
SELECT llm_adamw_step('train_tiny', 0.1);
UPDATE llm_param SET grad = llm_fill(shape, 0.5) WHERE model = 'train_tiny';
CREATE TEMP TABLE before AS SELECT name, data FROM llm_param WHERE model = 'train_tiny';
-- every gradient is 0.5: the norm is 0.5 * sqrt(number of parameters)
SELECT sum(cardinality(data::real[])) AS parameters FROM llm_param WHERE model = 'train_tiny';
SELECT round(llm_adamw_step('train_tiny', 0.1, weight_decay => 0.5, max_grad_norm => 1.0)::numeric, 4) AS grad_norm;
-- the first update moves every weight by about lr (Adam's step is lr * m / sqrt(v)), decay on
-- the 2-D tensors only; the gradients are written back clipped
SELECT p.name, p.step, round(max(abs(x.n - x.o))::numeric, 3) AS moved,
       round((max(g) * 10000)::numeric) AS grad_x1e4
FROM llm_param p JOIN before b USING (name),
     unnest(p.data::real[], b.data::real[]) AS x(n, o), unnest(p.grad::real[]) AS g
WHERE p.model = 'train_tiny' AND p.name IN ('wte.weight', 'ln_f.bias')
GROUP BY p.name, p.step ORDER BY p.name;
SELECT step, loss, lr, round(grad_norm::numeric, 4) AS grad_norm, weight_decay, beta1, beta2, eps, clip
FROM llm_train_log WHERE model = 'train_tiny';
SELECT name, step, round(grad_norm::numeric, 4) AS grad_norm, update_ratio > 0 AS moved
FROM llm_grad_stats WHERE model = 'train_tiny' AND name IN ('wte.weight', 'h.0.ln_1.bias') ORDER BY name;

-- checkpoints: a copy of weights and AdamW state, restored exactly
SELECT llm_checkpoint_save('train_tiny', 'one step') AS ckpt \gset
SELECT model, step, note, tensors FROM llm_checkpoints WHERE id = :ckpt;
CREATE TEMP TABLE saved AS SELECT name, data, m, v, step FROM llm_param WHERE model = 'train_tiny';
SELECT llm_adamw_step('train_tiny', 0.1, max_grad_norm => 1.0);
SELECT llm_checkpoint_load('train_tiny', :ckpt);
SELECT bool_and(llm_bytea(p.data) = llm_bytea(s.data) AND llm_bytea(p.m) = llm_bytea(s.m)
                AND llm_bytea(p.v) = llm_bytea(s.v) AND p.step = s.step AND p.grad IS NULL) AS restored
FROM llm_param p JOIN saved s USING (name) WHERE p.model = 'train_tiny';

-- bad input
INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)
VALUES ('train_wide', 1, 2, 6, 8, 5);
SELECT llm_checkpoint_load('train_wide', :ckpt);
SELECT llm_checkpoint_load('train_tiny', -1);
SELECT llm_checkpoint_load('no_such_model', :ckpt);
SELECT llm_checkpoint_delete(-1);
SELECT llm_adamw_step('no_such_model', 0.1);
SELECT llm_adamw_step('train_tiny', 0.1, beta2 => 1);
SELECT llm_train_state_tensor('train_tiny', 'wte.weight', 'data');

SELECT llm_checkpoint_delete(:ckpt);
SELECT count(*) FROM llm_checkpoints WHERE id = :ckpt;
DELETE FROM llm_model_config WHERE model IN ('train_tiny', 'train_wide');
SELECT count(*) FROM llm_train_log WHERE model = 'train_tiny';
