-- pg_llm: text generation (extension/src/generate/: sampling.c, generate.c,
-- stream.c, beam_search.c).
--
-- Sampling follows HuggingFace's generate(): repetition_penalty, then
-- temperature (0 = greedy), then top_k (0 = off), then top_p (1 = off), then
-- a draw from a generator seeded by `seed` (NULL = a random seed).  A fixed
-- seed gives the same tokens every time, at any pg_llm.threads.
--
-- The functions that generate are VOLATILE (a NULL seed draws a new one) and
-- PARALLEL RESTRICTED (a parallel worker must not decode its own copy of
-- the weights).

CREATE FUNCTION llm_sampling_probs(logits tensor,
                                   temperature double precision DEFAULT 1.0,
                                   top_k int DEFAULT 0,
                                   top_p double precision DEFAULT 1.0,
                                   repetition_penalty double precision DEFAULT 1.0,
                                   previous int[] DEFAULT NULL)
RETURNS tensor
    AS 'MODULE_PATHNAME', 'llm_sampling_probs_sql' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION llm_sampling_probs(tensor, double precision, int, double precision, double precision, int[]) IS
'the probabilities the next token is drawn with, for each row of logits ([vocab] or [rows, vocab]): '
'repetition_penalty on the ids in previous, then temperature (0 = greedy: 1 for the argmax), top_k (0 = off), '
'top_p (1 = off) as HuggingFace''s logits processors; 0 for the tokens filtered out';

-- ---- token ids in, token ids out ------------------------------------------------

CREATE FUNCTION llm_generate_tokens(model text, prompt int[], max_new_tokens int,
                                    temperature double precision DEFAULT 1.0,
                                    top_k int DEFAULT 0,
                                    top_p double precision DEFAULT 1.0,
                                    seed bigint DEFAULT NULL,
                                    stop_token int DEFAULT NULL,
                                    stop_ids int[] DEFAULT NULL,
                                    repetition_penalty double precision DEFAULT 1.0)
RETURNS int[]
    AS 'MODULE_PATHNAME', 'llm_generate_tokens_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_generate_tokens(text, int[], int, double precision, int, double precision, bigint, int, int[], double precision) IS
'the max_new_tokens tokens GPT-2 writes after prompt (only the new ones). temperature 0 = greedy; '
'else repetition_penalty, softmax(logits/temperature), top_k (0 = off), top_p (1 = off), then a draw from a '
'generator seeded by seed (NULL = random). Stops after stop_token or any of stop_ids (included in the result)';

-- Streams: call in the select list through a cursor, one FETCH per token:
--   BEGIN;
--   DECLARE gen NO SCROLL CURSOR FOR
--       SELECT (r).* FROM (SELECT llm_generate_stream_tokens('m', ARRAY[1,2], 20) AS r) AS s;
--   FETCH 1 FROM gen;   -- until is_complete
--   COMMIT;
-- In FROM (SELECT * FROM llm_generate_stream_tokens(...)) the rows come all
-- at the end.
CREATE FUNCTION llm_generate_stream_tokens(model text, prompt int[], max_tokens int,
                                           temperature double precision DEFAULT 1.0,
                                           top_k int DEFAULT 0,
                                           top_p double precision DEFAULT 1.0,
                                           seed bigint DEFAULT NULL,
                                           stop_ids int[] DEFAULT NULL,
                                           repetition_penalty double precision DEFAULT 1.0,
                                           OUT step int, OUT token_id int, OUT is_complete boolean)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_generate_stream_tokens_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED
    ROWS 64;
COMMENT ON FUNCTION llm_generate_stream_tokens(text, int[], int, double precision, int, double precision, bigint, int[], double precision) IS
'llm_generate_tokens one row per token (step from 1, token_id, is_complete on the last row), each computed '
'when fetched: call it in the select list through a cursor (FETCH 1) to receive tokens while the model runs';

CREATE FUNCTION llm_beam_search_tokens(model text, prompt int[], beam_width int, max_tokens int,
                                       length_penalty double precision DEFAULT 1.0,
                                       early_stopping text DEFAULT 'false',
                                       stop_ids int[] DEFAULT NULL,
                                       num_return int DEFAULT NULL,
                                       repetition_penalty double precision DEFAULT 1.0,
                                       OUT rank int, OUT score double precision, OUT tokens int[])
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_beam_search_tokens_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED
    ROWS 4;
COMMENT ON FUNCTION llm_beam_search_tokens(text, int[], int, int, double precision, text, int[], int, double precision) IS
'beam search as HuggingFace''s generate(num_beams=beam_width, do_sample=False): the num_return (default '
'beam_width) best hypotheses, rank 1 first, score = sum of log-probabilities / length^length_penalty, tokens '
'= the new ones (a stop id included). early_stopping: ''false'' (HF''s default), ''true'' or ''never''';

-- ---- text in, text out (the model's tokenizer: llm_bpe_vocab/llm_bpe_merges of the same name) ----
--
-- model NULL (or left out) is the setting pg_llm.default_model.  The
-- prompt is encoded as llm_encode does (<|endoftext|> in it is plain text);
-- an empty prompt starts from <|endoftext|>.  A prompt longer than the context leaves room for
-- max_tokens by dropping its oldest tokens, with a NOTICE.  Generation ends
-- after max_tokens, at a stop id (NULL stop_ids: <|endoftext|>; '{}': none)
-- or at the first of the stop strings; neither is part of the text.

CREATE FUNCTION llm_default_model() RETURNS text
    AS 'MODULE_PATHNAME', 'llm_default_model_sql' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION llm_default_model() IS
'the model llm_generate, llm_generate_stream and llm_beam_search use when none is named: the setting '
'pg_llm.default_model (an error if empty)';

CREATE FUNCTION llm_generate(prompt text, max_tokens int DEFAULT 64,
                             temperature double precision DEFAULT 1.0,
                             top_k int DEFAULT 0,
                             top_p double precision DEFAULT 1.0,
                             model text DEFAULT NULL,
                             seed bigint DEFAULT NULL,
                             stop text[] DEFAULT NULL,
                             stop_ids int[] DEFAULT NULL,
                             repetition_penalty double precision DEFAULT 1.0)
RETURNS text
    AS 'MODULE_PATHNAME', 'llm_generate_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_generate(text, int, double precision, int, double precision, text, bigint, text[], int[], double precision) IS
'the text GPT-2 writes after prompt: at most max_tokens tokens, sampled as llm_generate_tokens (temperature 0 = '
'greedy); model NULL = pg_llm.default_model; ends at a stop id (default <|endoftext|>) or stop string, '
'which are left out; a fixed seed gives the same text every time';

-- Streams as llm_generate_stream_tokens does (select list + cursor):
--   BEGIN;
--   DECLARE gen NO SCROLL CURSOR FOR
--       SELECT (r).* FROM (SELECT llm_generate_stream('Once upon a time', 40, 0.8, 40, 0.95) AS r) AS s;
--   FETCH 1 FROM gen;   -- one token a FETCH, until is_complete
--   COMMIT;
CREATE FUNCTION llm_generate_stream(prompt text, max_tokens int DEFAULT 64,
                                    temperature double precision DEFAULT 1.0,
                                    top_k int DEFAULT 0,
                                    top_p double precision DEFAULT 1.0,
                                    model text DEFAULT NULL,
                                    seed bigint DEFAULT NULL,
                                    stop text[] DEFAULT NULL,
                                    stop_ids int[] DEFAULT NULL,
                                    repetition_penalty double precision DEFAULT 1.0,
                                    OUT step int, OUT token_id int, OUT token text, OUT text text,
                                    OUT is_complete boolean)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_generate_stream_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED
    ROWS 64;
COMMENT ON FUNCTION llm_generate_stream(text, int, double precision, int, double precision, text, bigint, text[], int[], double precision) IS
'llm_generate one row per token: step (from 1), token_id, token (the text it adds: complete UTF-8 '
'characters only, '''' while one is split), text (all so far), is_complete (the last row). Rows reach the '
'client as they are made when called in the select list through a cursor (FETCH 1)';

CREATE FUNCTION llm_beam_search(prompt text, beam_width int, max_tokens int,
                                model text DEFAULT NULL,
                                length_penalty double precision DEFAULT 1.0,
                                early_stopping text DEFAULT 'false',
                                stop_ids int[] DEFAULT NULL,
                                num_return int DEFAULT NULL,
                                repetition_penalty double precision DEFAULT 1.0,
                                OUT rank int, OUT score double precision, OUT tokens int[], OUT text text)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_beam_search_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED
    ROWS 4;
COMMENT ON FUNCTION llm_beam_search(text, int, int, text, double precision, text, int[], int, double precision) IS
'llm_beam_search_tokens from a text prompt: the best hypotheses (rank 1 first) with their score, new tokens '
'and text (without the stop id, by default <|endoftext|>); model NULL = pg_llm.default_model';
