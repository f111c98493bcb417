-- The tokenizer without any file: a BPE learned from a few texts, GPT-2's
-- pre-tokenizer and byte alphabet, encoding and decoding, special tokens,
-- the version that keys the backend cache, and bad input.
\set SHOW_CONTEXT never

-- GPT-2's pre-tokenizer: contractions, letters, numbers, punctuation, space runs
-- (shown joined by |, with ↵ for a newline, → for a tab, ⍽ for a no-break space)
SELECT translate(array_to_string(llm_pretokenize(E'Hello, world! It''s 2024...  We''LL see\n\n  ok  '), '|'),
                 E'\n\t\u00a0', '↵→⍽') AS pieces;
SELECT translate(array_to_string(llm_pretokenize(E'naïve café 日本 ١٢٣ 👍🏽\t\u00a0x'), '|'),
                 E'\n\t\u00a0', '↵→⍽') AS pieces;

-- GPT-2's byte alphabet: ' ' is 'Ġ', '\n' is 'Ċ', printable bytes are themselves
SELECT llm_bpe_bytes_token(E' the\n'::bytea), llm_bpe_token_bytes('ĠtheĊ');
SELECT llm_bpe_bytes_token('\xc3a9'::bytea) AS e_acute_bytes;

-- learn 256 bytes + 12 merges + <|endoftext|>
SELECT llm_bpe_train('reg_tok', ARRAY['the cat and the hat', 'the bat sat on the mat', 'that is that'], 269);
SELECT vocab_size, merges, eot_id, special_tokens FROM llm_tokenizer_info('reg_tok');
SELECT rank, "left", "right" FROM llm_bpe_merges WHERE model = 'reg_tok' ORDER BY rank;
SELECT id, token, bytes FROM llm_bpe_vocab WHERE model = 'reg_tok' AND id >= 256 ORDER BY id;

-- encode, decode, the tokens as rows
SELECT llm_encode('the cat sat', 'reg_tok');
SELECT llm_decode(llm_encode('the cat sat', 'reg_tok'), 'reg_tok');
SELECT * FROM llm_tokenize('that hat!', 'reg_tok');
SELECT llm_encode('', 'reg_tok'), llm_decode('{}', 'reg_tok');

-- <|endoftext|> is plain text unless allowed
SELECT llm_encode('a<|endoftext|>', 'reg_tok');
SELECT llm_encode('a<|endoftext|>', 'reg_tok', allow_special => true);
SELECT llm_decode(llm_encode('a<|endoftext|>', 'reg_tok', allow_special => true), 'reg_tok');

-- é is the bytes C3 A9, two byte tokens: the first alone is not UTF-8 and
-- decodes to U+FFFD; a stream waits for the second byte.  C3 C3 'a': the first
-- C3 can never finish, the second is cut short by 'a'.
SELECT llm_encode('é', 'reg_tok');
SELECT llm_decode(ARRAY[127], 'reg_tok') = U&'\FFFD' AS lone_byte_is_fffd;
SELECT llm_decode_stream(ARRAY[127, 102, 64], 'reg_tok');
SELECT llm_decode_stream(ARRAY[127, 127, 64], 'reg_tok');
SELECT llm_decode_bytes(ARRAY[127, 102], 'reg_tok');

-- any write gives the tokenizer a new version; the cache follows
CREATE TEMP TABLE v AS SELECT version FROM llm_tokenizer WHERE model = 'reg_tok';
DELETE FROM llm_bpe_merges WHERE model = 'reg_tok' AND rank = (SELECT max(rank) FROM llm_bpe_merges WHERE model = 'reg_tok');
SELECT t.version > v.version AS bumped FROM llm_tokenizer t, v WHERE t.model = 'reg_tok';
SELECT llm_encode('the cat sat', 'reg_tok');
SELECT model, vocab_size, merges FROM llm_tokenizer_cache() WHERE model = 'reg_tok';

-- bad input
SELECT llm_encode('x', 'no_such_tokenizer');
SELECT llm_decode(ARRAY[0, 269], 'reg_tok');
SELECT llm_decode(ARRAY[-1], 'reg_tok');
SELECT llm_decode(ARRAY[1, NULL], 'reg_tok');
SELECT llm_bpe_train('reg_tok', ARRAY['x'], 100);
SELECT llm_bpe_train('reg_tok', 'SELECT 42', 300);
SELECT pg_llm_load_bpe_vocab('vocab.json', 'reg_tok');
SELECT pg_llm_load_bpe_merges('/no/such/merges.txt', 'reg_tok');
INSERT INTO llm_bpe_merges (model, rank, "left", "right") VALUES ('reg_tok', 99, 'q', 'z');
SELECT llm_encode('quiz', 'reg_tok');
DELETE FROM llm_bpe_vocab WHERE model = 'reg_tok' AND id = 0;
SELECT llm_encode('!', 'reg_tok');

DELETE FROM llm_tokenizer WHERE model = 'reg_tok';
SELECT count(*) FROM llm_bpe_vocab WHERE model = 'reg_tok';
SELECT llm_encode('x', 'reg_tok');
