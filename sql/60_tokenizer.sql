-- pg_llm: GPT-2's byte-level BPE tokenizer (extension/src/tokenizer/).
--
--   SELECT pg_llm_load_bpe('/data/gpt2/vocab.json', '/data/gpt2/merges.txt', 'gpt2');
--   SELECT llm_bpe_train('shakespeare', 'SELECT line FROM play', 4096);   -- or learn one
--   SELECT llm_encode('Hello world!', 'gpt2');                -- {15496,995,0}
--   SELECT llm_decode(ARRAY[15496, 995, 0], 'gpt2');          -- Hello world!
--   SELECT * FROM llm_tokenize('Hello world!', 'gpt2');       -- a row per token
--
-- A tokenizer is named like a model (llm_export_hf writes the model's
-- tokenizer beside its weights), but needs no row in llm_model_config.
-- Its vocabulary and merges are rows: learners can query, join and change
-- them.  Encoding reads them once into backend memory and reuses them while
-- llm_tokenizer.version is unchanged; every write to llm_bpe_vocab or
-- llm_bpe_merges bumps it (statement triggers), as llm_param does the
-- model's version.
--
-- Special tokens: <|endoftext|> is plain text unless allow_special => true
-- (then it is its own id, 50256 in GPT-2), as in HF tokenizers' BPE
-- pipeline and tiktoken's encode_ordinary; text from users cannot smuggle
-- in a control token by accident.  GPT2TokenizerFast and tiktoken's
-- encode(allowed_special="all") are the allow_special => true behaviour.
-- Special tokens are the vocabulary's tokens that no merge makes.

-- Every write to llm_bpe_vocab or llm_bpe_merges takes a fresh number from
-- this sequence into llm_tokenizer.version (never handed out twice).
CREATE SEQUENCE llm_tokenizer_version_seq;
COMMENT ON SEQUENCE llm_tokenizer_version_seq IS
'the numbers llm_tokenizer.version takes: each write to a tokenizer''s rows takes a fresh one';

CREATE TABLE llm_tokenizer (
    model      text PRIMARY KEY,
    version    bigint NOT NULL DEFAULT nextval('llm_tokenizer_version_seq'),
    created_at timestamptz NOT NULL DEFAULT now(),
    owner      name NOT NULL DEFAULT current_user,
    shared     boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE llm_tokenizer IS
'one row per BPE tokenizer (named like its model); version changes with every write to its vocab or merges';
COMMENT ON COLUMN llm_tokenizer.model IS 'the tokenizer''s name: the model it serves, e.g. gpt2-small';
COMMENT ON COLUMN llm_tokenizer.version IS
    'changes with every write to this tokenizer''s vocab or merges: the backend tokenizer cache is keyed by it';
COMMENT ON COLUMN llm_tokenizer.created_at IS 'when the tokenizer was first loaded or trained';
COMMENT ON COLUMN llm_tokenizer.owner IS 'the role that made it: only its owner changes its vocab and merges';
COMMENT ON COLUMN llm_tokenizer.shared IS 'every role may read it and encode with it (llm_share of its model)';

CREATE FUNCTION llm_bpe_token_bytes(token text) RETURNS bytea
    AS 'MODULE_PATHNAME', 'llm_bpe_token_bytes_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_bpe_token_bytes(text) IS
'the bytes a byte-level BPE token stands for: each character of GPT-2''s byte alphabet is one byte '
'(''Ġthe'' -> '' the''); other characters (in added tokens) stand for their UTF-8';

CREATE FUNCTION llm_bpe_bytes_token(bytes bytea) RETURNS text
    AS 'MODULE_PATHNAME', 'llm_bpe_bytes_token_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_bpe_bytes_token(bytea) IS
'the byte-level token text of some bytes, one alphabet character per byte ('' the'' -> ''Ġthe'')';

CREATE TABLE llm_bpe_vocab (
    model  text NOT NULL REFERENCES llm_tokenizer (model) ON DELETE CASCADE ON UPDATE CASCADE,
    token  text NOT NULL CHECK (token <> ''),
    id     int  NOT NULL CHECK (id >= 0),
    bytes  bytea GENERATED ALWAYS AS (llm_bpe_token_bytes(token)) STORED,
    PRIMARY KEY (model, id),
    UNIQUE (model, token)
);
COMMENT ON TABLE llm_bpe_vocab IS
'a BPE tokenizer''s vocabulary, vocab.json as rows: token text (byte-level alphabet), id, and the bytes it stands for';
COMMENT ON COLUMN llm_bpe_vocab.model IS 'the tokenizer (llm_tokenizer.model)';
COMMENT ON COLUMN llm_bpe_vocab.token IS 'the token as vocab.json spells it, in GPT-2''s byte alphabet (''Ġthe'' is " the")';
COMMENT ON COLUMN llm_bpe_vocab.id IS 'the token id: a row of wte.weight';
COMMENT ON COLUMN llm_bpe_vocab.bytes IS 'the bytes the token stands for (computed from token)';

CREATE TABLE llm_bpe_merges (
    model   text NOT NULL REFERENCES llm_tokenizer (model) ON DELETE CASCADE ON UPDATE CASCADE,
    rank    int  NOT NULL CHECK (rank >= 0),
    "left"  text NOT NULL CHECK ("left" <> ''),
    "right" text NOT NULL CHECK ("right" <> ''),
    PRIMARY KEY (model, rank),
    UNIQUE (model, "left", "right")
);
COMMENT ON TABLE llm_bpe_merges IS
'a BPE tokenizer''s merges, merges.txt as rows: the pair "left" "right" joins into one token; lower rank merges first';
COMMENT ON COLUMN llm_bpe_merges.model IS 'the tokenizer (llm_tokenizer.model)';
COMMENT ON COLUMN llm_bpe_merges.rank IS 'the merge''s priority: 0 merges first (line order of merges.txt)';
COMMENT ON COLUMN llm_bpe_merges."left" IS 'the first token of the pair';
COMMENT ON COLUMN llm_bpe_merges."right" IS 'the second token of the pair';

-- Bump the version of every tokenizer whose rows a statement touched.
CREATE FUNCTION llm_tokenizer_bump_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE llm_tokenizer SET version = nextval('llm_tokenizer_version_seq');
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE llm_tokenizer SET version = nextval('llm_tokenizer_version_seq')
        WHERE model IN (SELECT DISTINCT model FROM old_rows);
    ELSIF TG_OP = 'INSERT' THEN
        UPDATE llm_tokenizer SET version = nextval('llm_tokenizer_version_seq')
        WHERE model IN (SELECT DISTINCT model FROM new_rows);
    ELSE
        UPDATE llm_tokenizer SET version = nextval('llm_tokenizer_version_seq')
        WHERE model IN (SELECT model FROM new_rows UNION SELECT model FROM old_rows);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION llm_tokenizer_bump_version() IS
'trigger: a write to llm_bpe_vocab or llm_bpe_merges gives the tokenizer a new version (the backend caches reload)';

CREATE TRIGGER llm_bpe_vocab_version_ins AFTER INSERT ON llm_bpe_vocab
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_vocab_version_upd AFTER UPDATE ON llm_bpe_vocab
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_vocab_version_del AFTER DELETE ON llm_bpe_vocab
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_vocab_version_trunc AFTER TRUNCATE ON llm_bpe_vocab
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_merges_version_ins AFTER INSERT ON llm_bpe_merges
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_merges_version_upd AFTER UPDATE ON llm_bpe_merges
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_merges_version_del AFTER DELETE ON llm_bpe_merges
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();
CREATE TRIGGER llm_bpe_merges_version_trunc AFTER TRUNCATE ON llm_bpe_merges
    FOR EACH STATEMENT EXECUTE FUNCTION llm_tokenizer_bump_version();

-- ---- loading GPT-2's files (server side) -------------------------------------

CREATE FUNCTION pg_llm_load_bpe_vocab(path text, model text) RETURNS int
    AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_load_bpe_vocab(text, text) IS
'replace a tokenizer''s vocabulary with a vocab.json file on the server ({"token": id}); returns the tokens loaded';

CREATE FUNCTION pg_llm_load_bpe_merges(path text, model text) RETURNS int
    AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION pg_llm_load_bpe_merges(text, text) IS
'replace a tokenizer''s merges with a merges.txt file on the server ("left right" per line); returns the merges loaded';

-- ---- encoding and decoding -------------------------------------------------------

CREATE FUNCTION llm_encode(input text, model text, allow_special boolean DEFAULT false) RETURNS int[]
    AS 'MODULE_PATHNAME', 'llm_encode_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_encode(text, text, boolean) IS
'the token ids of a text (GPT-2''s byte-level BPE); allow_special => true reads <|endoftext|> in the text '
'as the special token, else it is plain text';

CREATE FUNCTION llm_decode(ids int[], model text) RETURNS text
    AS 'MODULE_PATHNAME', 'llm_decode_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_decode(int[], text) IS
'the text of token ids; bytes that are not valid UTF-8 (a character cut between tokens) and NUL become U+FFFD';

CREATE FUNCTION llm_decode_bytes(ids int[], model text) RETURNS bytea
    AS 'MODULE_PATHNAME', 'llm_decode_bytes_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_decode_bytes(int[], text) IS 'the bytes of token ids, exactly';

CREATE FUNCTION llm_decode_stream(ids int[], model text) RETURNS text[]
    AS 'MODULE_PATHNAME', 'llm_decode_stream_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_decode_stream(int[], text) IS
'what a streaming decoder emits after each token: only whole characters (a character split over tokens '
'comes out with its last token); the concatenation is llm_decode(ids, model)';

CREATE FUNCTION llm_pretokenize(input text) RETURNS text[]
    AS 'MODULE_PATHNAME', 'llm_pretokenize_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_pretokenize(text) IS
'the pieces GPT-2''s pre-tokenizer cuts a text into before BPE (the matches of '
'''s|''t|''re|''ve|''m|''ll|''d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)';

CREATE FUNCTION llm_tokenize(input text, model text, allow_special boolean DEFAULT false)
RETURNS TABLE (pos int, id int, token text, bytes bytea)
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    SELECT t.pos::int, t.id, v.token, v.bytes
    FROM unnest(llm_encode(input, model, allow_special)) WITH ORDINALITY AS t(id, pos)
    JOIN llm_bpe_vocab v ON v.model = llm_tokenize.model AND v.id = t.id
    ORDER BY t.pos
$$;
COMMENT ON FUNCTION llm_tokenize(text, text, boolean) IS
'a text''s tokens as rows: position (from 1), id, token text (byte-level alphabet) and the bytes it stands for';

CREATE FUNCTION llm_tokenizer_info(model text, OUT vocab_size int, OUT merges int, OUT eot_id int,
                                   OUT special_tokens text[], OUT version bigint)
    AS 'MODULE_PATHNAME', 'llm_tokenizer_info_sql' LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_tokenizer_info(text) IS
'a tokenizer''s size, merges, <|endoftext|> id and special tokens; loading it checks that vocab and merges agree';

CREATE FUNCTION llm_tokenizer_cache(OUT model text, OUT version bigint, OUT vocab_size int, OUT merges int,
                                    OUT cached_pieces int, OUT loads bigint)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_tokenizer_cache_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_tokenizer_cache() IS
'the tokenizers this backend has cached (version, size, pieces in its encode cache), and how many loads it did';

CREATE FUNCTION llm_tokenizer_cache_clear() RETURNS void
    AS 'MODULE_PATHNAME', 'llm_tokenizer_cache_clear_sql' LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION llm_tokenizer_cache_clear() IS 'free the tokenizers this backend has cached';

-- Both files at once, checked against each other: all or nothing.
CREATE FUNCTION pg_llm_load_bpe(vocab_path text, merges_path text, model text) RETURNS int
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM pg_llm_load_bpe_vocab(vocab_path, model);
    PERFORM pg_llm_load_bpe_merges(merges_path, model);
    RETURN (llm_tokenizer_info(model)).vocab_size;     -- errors if they do not fit
END $$;
COMMENT ON FUNCTION pg_llm_load_bpe(text, text, text) IS
'load a tokenizer from vocab.json and merges.txt on the server, checking they belong together; returns the vocabulary size';

-- ---- training ---------------------------------------------------------------------

CREATE FUNCTION llm_bpe_train(model text, corpus_query text, vocab_size int) RETURNS int
    AS 'MODULE_PATHNAME', 'llm_bpe_train_query' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_bpe_train(text, text, int) IS
'learn a byte-level BPE tokenizer of vocab_size tokens (256 bytes, merges, <|endoftext|> last) from the texts '
'corpus_query returns (one text column), as HF''s BpeTrainer would; replaces the model''s vocab and merges';

CREATE FUNCTION llm_bpe_train(model text, corpus text[], vocab_size int) RETURNS int
    AS 'MODULE_PATHNAME', 'llm_bpe_train_array' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION llm_bpe_train(text, text[], int) IS
'learn a byte-level BPE tokenizer of vocab_size tokens from an array of texts (see the corpus_query form)';

-- ---- writing the files -----------------------------------------------------------

-- vocab.json and merges.txt of a tokenizer, as HuggingFace writes them.
CREATE FUNCTION llm_bpe_vocab_json(model text) RETURNS text
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    SELECT json_object_agg(v.token, v.id ORDER BY v.id)::text
    FROM llm_bpe_vocab v WHERE v.model = llm_bpe_vocab_json.model
$$;
COMMENT ON FUNCTION llm_bpe_vocab_json(text) IS 'a tokenizer''s vocabulary as the text of a vocab.json';

CREATE FUNCTION llm_bpe_merges_txt(model text) RETURNS text
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    SELECT E'#version: 0.2\n' || coalesce(string_agg(m."left" || ' ' || m."right" || E'\n', '' ORDER BY m.rank), '')
    FROM llm_bpe_merges m WHERE m.model = llm_bpe_merges_txt.model
$$;
COMMENT ON FUNCTION llm_bpe_merges_txt(text) IS 'a tokenizer''s merges as the text of a merges.txt';

-- Write dir/vocab.json and dir/merges.txt on the server; returns the bytes written.
CREATE FUNCTION llm_export_tokenizer(model text, dir text) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM llm_tokenizer_info(model);      -- it exists, and is consistent
    RETURN llm_write_text_file(rtrim(dir, '/') || '/vocab.json', llm_bpe_vocab_json(model))
         + llm_write_text_file(rtrim(dir, '/') || '/merges.txt', llm_bpe_merges_txt(model));
END $$;
COMMENT ON FUNCTION llm_export_tokenizer(text, text) IS
'write a tokenizer''s vocab.json and merges.txt into a folder on the server; returns the bytes written';
