-- Generation without files: a tokenizer learned from three texts and a GPT-2
-- from llm_init with its vocabulary size.  Each check compares two ways to
-- the same result, or shows a rule (the filters, stops, the default model,
-- the errors); no generated text is printed.
\set SHOW_CONTEXT never
SELECT llm_bpe_train('reg_gen', ARRAY['the cat and the hat', 'the bat sat on the mat', 'that is that'], 269);
INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)
VALUES ('reg_gen', 2, 2, 16, 32, 269), ('reg_gen_notok', 1, 1, 8, 16, 269);
SELECT llm_init('reg_gen', 7), llm_init('reg_gen_notok', 7);

-- the filters: greedy takes the first largest; top-k keeps ties with the k-th;
-- top-p keeps the lower ids among equal logits; the penalty turns 2, -2 into 1, -4
SELECT llm_sampling_probs('[1, 3, 2, 3]', 0) AS greedy;
SELECT llm_sampling_probs('[3, 1, 3, 2]', 1, 1) AS top_k_1;
SELECT llm_sampling_probs('[0, 0, 0, 0]', 1, 0, 0.5) AS top_p_half;
SELECT bool_and(abs(p - w) < 1e-6) AS penalised
FROM (SELECT exp(1) + exp(-4) + 1 AS z) c,
     unnest(llm_sampling_probs('[2, -2, 0]', 1, 0, 1, 2, ARRAY[0, 1, 1])::real[],
            ARRAY[exp(1) / z, exp(-4) / z, 1 / z]) AS t(p, w);

-- a seed fixes the tokens; the text is the tokens decoded
SELECT llm_generate_tokens('reg_gen', ARRAY[1, 2, 3], 10, 0.9, 0, 1, 42)
     = llm_generate_tokens('reg_gen', ARRAY[1, 2, 3], 10, 0.9, 0, 1, 42) AS same_seed_same_tokens;
SELECT llm_generate('the cat', 12, 0.9, seed => 5, model => 'reg_gen', stop_ids => '{}')
     = llm_decode(llm_generate_tokens('reg_gen', llm_encode('the cat', 'reg_gen'), 12, 0.9, seed => 5),
                  'reg_gen') AS text_is_tokens_decoded;

-- the streams are the same generations, row by row
SELECT array_agg(token_id ORDER BY step) = llm_generate_tokens('reg_gen', ARRAY[1, 2, 3], 10, 0.9, 0, 1, 42)
       AS same_tokens, bool_and(is_complete = (step = 10)) AS last_row_completes
FROM llm_generate_stream_tokens('reg_gen', ARRAY[1, 2, 3], 10, 0.9, 0, 1, 42);
SELECT string_agg(token, '' ORDER BY step)
       = llm_generate('the cat', 12, 0.9, seed => 5, model => 'reg_gen', stop_ids => '{}') AS same_text
FROM llm_generate_stream('the cat', 12, 0.9, seed => 5, model => 'reg_gen', stop_ids => '{}');

-- beam search: ranked by score; one beam is greedy decoding
SELECT bool_and(score >= next_score) AS ranked, count(*) AS beams
FROM (SELECT score, lead(score, 1, '-Infinity') OVER (ORDER BY rank) AS next_score
      FROM llm_beam_search_tokens('reg_gen', ARRAY[1, 2, 3], 3, 6)) s;
SELECT tokens = llm_generate_tokens('reg_gen', ARRAY[1, 2, 3], 6, 0) AS one_beam_is_greedy
FROM llm_beam_search_tokens('reg_gen', ARRAY[1, 2, 3], 1, 6);

-- the model the text functions use by default
SET pg_llm.default_model = 'reg_gen';
SELECT llm_default_model();
SELECT llm_generate('the cat', 5, 0) = llm_generate('the cat', 5, 0, model => 'reg_gen') AS default_model_used;
RESET pg_llm.default_model;

-- a prompt longer than the context keeps its end, with a NOTICE
SELECT llm_generate(repeat('the cat ', 20), 8, 0, model => 'reg_gen') IS NOT NULL AS generated;

-- bad input
SELECT llm_generate('the', 0, model => 'reg_gen');
SELECT llm_generate('the', 32, model => 'reg_gen');
SELECT llm_generate('the', 5, -1, model => 'reg_gen');
SELECT llm_generate('the', 5, 1, -1, model => 'reg_gen');
SELECT llm_generate('the', 5, 1, 0, 1.5, model => 'reg_gen');
SELECT llm_generate('the', 5, model => 'reg_gen', stop => ARRAY['']);
SELECT * FROM llm_beam_search('the', 0, 5, 'reg_gen');
SELECT * FROM llm_beam_search_tokens('reg_gen', ARRAY[1], 2, 5, early_stopping => 'maybe');
SELECT llm_generate('the', 5, model => 'nope');
SELECT llm_generate('the', 5, model => 'reg_gen_notok');
SET pg_llm.default_model = '';
SELECT llm_generate('the', 5);
RESET pg_llm.default_model;

DELETE FROM llm_model_config WHERE model IN ('reg_gen', 'reg_gen_notok');
DELETE FROM llm_tokenizer WHERE model = 'reg_gen';
