-- The model registry, llm_param's checks, the version that keys the weight
-- cache, and the forward functions' argument checks.
\set SHOW_CONTEXT never
SELECT model, n_layer, n_head, n_embd, n_positions, vocab_size, layer_norm_eps
FROM llm_model_config WHERE model = 'gpt2-small';
-- 2 embeddings + 12 per layer + final LayerNorm = 148 tensors, 124,439,808 numbers
SELECT count(*), sum((SELECT exp(sum(ln(d))) FROM unnest(shape) d))::bigint
FROM llm_param_shapes('gpt2-small');
SELECT * FROM llm_param_shapes('gpt2-small') WHERE name LIKE 'h.0.%' OR name NOT LIKE 'h.%';

INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)
VALUES ('tiny', 2, 2, 8, 16, 11);
SELECT llm_init('tiny', 42);
SELECT count(*) AS tensors FROM llm_param WHERE model = 'tiny';
SELECT llm_check_complete('tiny');
SELECT name, shape FROM llm_param WHERE model = 'tiny' AND name IN ('wte.weight', 'h.1.mlp.c_fc.weight') ORDER BY name;
-- GPT-2's initialisation: biases 0, LayerNorm gains 1
SELECT bool_and(x = 0) FROM llm_param, unnest(data::real[]) x WHERE model = 'tiny' AND name LIKE '%.bias';
SELECT bool_and(x = 1) FROM llm_param, unnest(data::real[]) x WHERE model = 'tiny' AND name LIKE '%ln_%.weight';

-- every write path is checked against the model's shapes
INSERT INTO llm_param (model, name, data) VALUES ('tiny', 'h.9.ln_1.weight', '[1]');
UPDATE llm_param SET data = '[1,2,3]' WHERE model = 'tiny' AND name = 'ln_f.bias';
UPDATE llm_param SET grad = '[1,2,3]' WHERE model = 'tiny' AND name = 'ln_f.bias';
INSERT INTO llm_param (model, name, data) VALUES ('nope', 'wte.weight', '[1]');
-- shape is filled in from the parameter list, and holds nothing else
UPDATE llm_param SET shape = '{3}' WHERE model = 'tiny' AND name = 'ln_f.bias';
UPDATE llm_param SET shape = NULL WHERE model = 'tiny' AND name = 'ln_f.bias' RETURNING shape;

-- any write gives the model a new version (the weight cache's key)
CREATE TEMP TABLE v AS SELECT version FROM llm_model_config WHERE model = 'tiny';
UPDATE llm_param SET data = llm_scale(data, 2) WHERE model = 'tiny' AND name = 'ln_f.weight';
SELECT c.version > v.version AS bumped FROM llm_model_config c, v WHERE c.model = 'tiny';
-- so does a change to the model's row; its shapes must still fit the parameters
UPDATE v SET version = (SELECT version FROM llm_model_config WHERE model = 'tiny');
UPDATE llm_model_config SET layer_norm_eps = 1e-3 WHERE model = 'tiny';
SELECT c.version > v.version AS bumped FROM llm_model_config c, v WHERE c.model = 'tiny';
UPDATE llm_model_config SET n_positions = 32 WHERE model = 'tiny';
-- a row moved to another model gives that model a new version too
INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)
VALUES ('tiny_twin', 2, 2, 8, 16, 11);
CREATE TEMP TABLE v2 AS SELECT version FROM llm_model_config WHERE model = 'tiny_twin';
UPDATE llm_param SET model = 'tiny_twin' WHERE model = 'tiny' AND name = 'ln_f.weight';
SELECT c.version > v2.version AS bumped FROM llm_model_config c, v2 WHERE c.model = 'tiny_twin';
UPDATE llm_param SET model = 'tiny' WHERE model = 'tiny_twin';
DELETE FROM llm_model_config WHERE model = 'tiny_twin';

-- the forward pass
SELECT llm_shape(llm_logits('tiny', '{1,2,3}'));
SELECT llm_shape(llm_logits('tiny', '{1,2,3}', last_only => true));
SELECT llm_loss('tiny', '{1,2,3}', '{2,3,-100}') > 0 AS positive_loss;
SELECT cardinality(llm_generate_tokens('tiny', '{1,2,3}', 5, 0));
SELECT llm_generate_tokens('tiny', '{1,2,3}', 5, 0) = llm_generate_tokens('tiny', '{1,2,3}', 5, 0) AS greedy_repeats;
SELECT llm_generate_tokens('tiny', '{1}', 8, 1.0, seed => 7) = llm_generate_tokens('tiny', '{1}', 8, 1.0, seed => 7) AS seeded_repeats;

-- bad input
SELECT llm_logits('no-such-model', '{1}');
SELECT llm_logits('tiny', '{1,11}');
SELECT llm_logits('tiny', '{}');
SELECT llm_generate_tokens('tiny', '{1,2,3}', 14, 0);
SELECT llm_generate_tokens('tiny', '{1}', 2, -1);
SELECT llm_generate_tokens('tiny', '{1}', 2, 1, top_p => 0);
SELECT llm_generate_tokens('tiny', '{1}', 2, 1, top_k => -1);
SELECT llm_loss('tiny', '{1,2}', '{1}');

-- deleting the model removes its parameters
DELETE FROM llm_model_config WHERE model = 'tiny';
SELECT count(*) FROM llm_param WHERE model = 'tiny';
