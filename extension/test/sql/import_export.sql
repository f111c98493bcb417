-- Checkpoints: export a model as a HuggingFace folder, read it back, import it.
-- (The files go into the data directory: the one absolute path we know.
-- tests/test_import_export*.py covers real HF checkpoints and bad files.)
\set SHOW_CONTEXT never
SELECT current_setting('data_directory') || '/pg_llm_regress_io' AS dir \gset

-- HuggingFace names -> llm_param names (NULL: not a parameter we store)
SELECT n AS hf_name, llm_hf_param_name(n) AS name
FROM unnest(ARRAY['transformer.h.0.attn.c_attn.weight', 'h.0.attn.bias',
                  'transformer.h.1.attn.masked_bias', 'lm_head.weight', 'wte.weight']) AS n;

-- a tiny model with distinct values in every tensor
INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)
VALUES ('io_regress', 1, 2, 4, 3, 5);
INSERT INTO llm_param (model, name, data)
SELECT 'io_regress', s.name,
       llm_tensor(ARRAY(SELECT (i * 0.25 + ord)::real
                        FROM generate_series(1, s.shape[1] * coalesce(s.shape[2], 1)) AS i), s.shape)
FROM llm_param_shapes('io_regress') WITH ORDINALITY AS s(name, shape, ord);

SELECT llm_export_hf('io_regress', :'dir') AS bytes_written;
SELECT name, dtype, shape FROM llm_read_safetensors(:'dir' || '/model.safetensors') ORDER BY name;
SELECT llm_read_text_file(:'dir' || '/config.json')::jsonb = llm_hf_config('io_regress') AS config_ok;
SELECT key, value FROM jsonb_each(llm_hf_config('io_regress')) ORDER BY key COLLATE "C";

-- import the folder as a new model: registered from config.json, same values
SELECT llm_import_hf(:'dir', 'io_regress_copy') AS imported;
SELECT n_layer, n_head, n_embd, n_positions, vocab_size, layer_norm_eps, n_inner
FROM llm_model_config WHERE model = 'io_regress_copy';
SELECT count(*) AS equal_tensors
FROM llm_param a JOIN llm_param b ON b.model = 'io_regress_copy' AND b.name = a.name
WHERE a.model = 'io_regress' AND llm_bytea(a.data) = llm_bytea(b.data);

-- errors
SELECT * FROM llm_read_safetensors('model.safetensors');
SELECT * FROM llm_read_npz('/nonexistent/pg_llm.npz');
SELECT pg_llm_import_safetensors(:'dir' || '/model.safetensors', 'io_unknown');
\set VERBOSITY sqlstate
SELECT * FROM llm_read_npz(:'dir' || '/config.json');  -- not a zip (the message names the path)
\set VERBOSITY default
SELECT llm_register_hf_config('io_regress', '{"n_layer": 2, "n_head": 2, "n_embd": 4, "n_positions": 3, "vocab_size": 5}');
SELECT llm_register_hf_config('io_regress', '{"activation_function": "relu"}');
SELECT llm_export_hf('io_unknown', :'dir');
SELECT pg_llm_export_safetensors('io_regress', 'relative.safetensors');
-- an unchanged model after all that
SELECT count(*) AS still_equal
FROM llm_param a JOIN llm_param b ON b.model = 'io_regress_copy' AND b.name = a.name
WHERE a.model = 'io_regress' AND llm_bytea(a.data) = llm_bytea(b.data);

DELETE FROM llm_model_config WHERE model IN ('io_regress', 'io_regress_copy');
