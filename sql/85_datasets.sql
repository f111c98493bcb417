-- pg_llm: datasets from text, and evaluation on them.
--
--   SELECT llm_dataset_from_text('shakespeare', pg_read_file(...), 64, val_fraction => 0.1);
--   SELECT * FROM llm_eval('shakespeare', 'val');            -- loss and perplexity
--
-- A dataset is rows of llm_dataset (80_train.sql): blocks of token ids and
-- the ids each position should predict.  Text becomes one by way of the
-- model's tokenizer (60_tokenizer.sql); pg_llm_lab.prepare_dataset does the same
-- for files on the client, with a progress bar.

CREATE FUNCTION llm_dataset_from_text(model text, input text, block_size int, stride int DEFAULT NULL,
                                      split text DEFAULT 'train',
                                      val_fraction double precision DEFAULT 0,
                                      dataset text DEFAULT current_user)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    PERFORM llm_require_arg('llm_dataset_from_text', 'model', model IS NULL);
    PERFORM llm_require_arg('llm_dataset_from_text', 'input', input IS NULL);
    RETURN llm_dataset_from_tokens(llm_encode(input, model), block_size, stride, split, val_fraction, dataset);
END $$;
COMMENT ON FUNCTION llm_dataset_from_text(text, text, int, int, text, double precision, text) IS
'encode text with the model''s tokenizer and cut it into rows of llm_dataset `dataset` (default: named after you), '
'block_size tokens each (see llm_dataset_from_tokens: the last val_fraction of the tokens go to split ''val''); '
'returns the rows added';

CREATE FUNCTION llm_eval(model text, split text DEFAULT 'val', max_rows int DEFAULT NULL,
                         dataset text DEFAULT current_user,
                         OUT loss double precision, OUT perplexity double precision,
                         OUT tokens bigint, OUT examples bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    PERFORM llm_require_arg('llm_eval', 'model', model IS NULL);
    PERFORM llm_require_arg('llm_eval', 'split', split IS NULL);
    PERFORM llm_require_arg('llm_eval', 'dataset', dataset IS NULL);
    IF max_rows < 1 THEN
        RAISE EXCEPTION 'llm_eval: max_rows must be >= 1, got %', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- llm_loss is the mean over a row's counted targets: weigh it back by
    -- their number, so the result is the mean over every counted token.
    SELECT sum(r.loss * r.counted) / sum(r.counted), sum(r.counted), count(*)
    INTO loss, tokens, examples
    FROM (SELECT llm_loss(model, d.tokens, d.target)::double precision AS loss, c.counted
          FROM (SELECT * FROM llm_dataset d WHERE d.dataset = dataset AND d.split = split ORDER BY d.id LIMIT max_rows) d,
               LATERAL (SELECT count(*) AS counted FROM unnest(d.target) AS t WHERE t <> -100) c
          WHERE c.counted > 0) r;
    IF examples = 0 THEN
        RAISE EXCEPTION 'llm_eval: dataset "%" has no rows with targets in split "%"', dataset, split
            USING ERRCODE = 'no_data_found',
                  HINT = 'Add some with llm_dataset_from_text(model, text, block_size, val_fraction => 0.1).';
    END IF;
    perplexity := exp(loss);
END $$;
COMMENT ON FUNCTION llm_eval(text, text, int, text) IS
'the model''s mean cross-entropy (nats per token) over every counted target of a split of llm_dataset `dataset` '
'(default: named after you) '
'(the first max_rows rows by id, or all), its perplexity exp(loss), and how many tokens and rows it saw';
