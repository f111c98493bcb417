"""llm_bpe_train: the merges HuggingFace's BpeTrainer learns, learned in the
database; the result exported as a HuggingFace folder that
GPT2TokenizerFast loads and encodes with exactly as llm_encode does."""
import json

import psycopg
import pytest

from pg_llm_lab import hf, tokenizer
from tokenizer_fixtures import CORPUS, NO_CORPUS, make_readable, sample_corpus, tok_dir  # noqa: F401

tokenizers_lib = pytest.importorskip("tokenizers")


def hf_train(texts, vocab_size):
    """HF's BpeTrainer configured as llm_bpe_train works: byte level, the whole
    byte alphabet first, no minimum frequency, no special token (ours is
    appended after the merges).  Returns (vocab, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def trained_rows(conn, model):
    vocab = dict(conn.execute("SELECT token, id FROM llm_bpe_vocab WHERE model = %s", [model]).fetchall())
    merges = [tuple(r) for r in conn.execute(
        'SELECT "left", "right" FROM llm_bpe_merges WHERE model = %s ORDER BY rank', [model])]
    return vocab, merges


@pytest.fixture
def drop_trained(db_url):
    yield
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(r"DELETE FROM llm_tokenizer WHERE model LIKE 'train\_%'")
        conn.execute(r"DELETE FROM llm_model_config WHERE model LIKE 'train\_%'")
        conn.execute("DROP TABLE IF EXISTS train_corpus")


def corpus_table(conn, texts):
    conn.execute("DROP TABLE IF EXISTS train_corpus")
    conn.execute("CREATE TABLE train_corpus (i int, line text)")
    with conn.cursor().copy("COPY train_corpus (i, line) FROM STDIN") as copy:
        for i, text in enumerate(texts):
            copy.write_row((i, text))


def check_like_hf(conn, model, texts, vocab_size):
    vocab, merges = trained_rows(conn, model)
    hf_vocab, hf_merges = hf_train(texts, vocab_size)
    assert merges == hf_merges
    assert vocab.pop("<|endoftext|>") == len(hf_vocab) == vocab_size - 1
    assert vocab == hf_vocab
    # GPT-2's layout: the 256 bytes in the alphabet's order, merge i makes token 256 + i
    byte_chars = tokenizer.bytes_to_unicode()
    assert [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])][:256] == sorted(byte_chars.values())
    assert all(vocab[a + b] == 256 + i for i, (a, b) in enumerate(merges))


def test_like_hf_on_text_made_here(conn, drop_trained):
    texts = sample_corpus()
    assert conn.execute("SELECT llm_bpe_train('train_a', %s::text[], 1500)", [texts]).fetchone()[0] == 1500
    check_like_hf(conn, "train_a", texts, 1500)


def test_like_hf_on_tiny_shakespeare(conn, drop_trained):
    if not CORPUS.exists():
        pytest.skip(NO_CORPUS)
    lines = CORPUS.read_text().splitlines(keepends=True)
    corpus_table(conn, lines)
    n = conn.execute("SELECT llm_bpe_train('train_s', 'SELECT line FROM train_corpus', 4096)").fetchone()[0]
    assert n == 4096
    check_like_hf(conn, "train_s", lines, 4096)


def test_query_and_array_agree(conn, drop_trained):
    texts = sample_corpus()[:40] + [None, ""]
    corpus_table(conn, texts)
    conn.execute("SELECT llm_bpe_train('train_q', 'SELECT line FROM train_corpus ORDER BY i', 600)")
    conn.execute("SELECT llm_bpe_train('train_r', %s::text[], 600)", [texts])
    assert trained_rows(conn, "train_q") == trained_rows(conn, "train_r")


def test_training_again_replaces_and_bumps_the_version(conn, drop_trained):
    conn.execute("SELECT llm_bpe_train('train_v', %s::text[], 400)", [sample_corpus()])
    v1 = conn.execute("SELECT version FROM llm_tokenizer WHERE model = 'train_v'").fetchone()[0]
    ids = conn.execute("SELECT llm_encode('the them there', 'train_v')").fetchone()[0]
    conn.execute("SELECT llm_bpe_train('train_v', %s::text[], 300)", [sample_corpus()])
    assert conn.execute("SELECT version FROM llm_tokenizer WHERE model = 'train_v'").fetchone()[0] > v1
    assert conn.execute("SELECT count(*) FROM llm_bpe_vocab WHERE model = 'train_v'").fetchone()[0] == 300
    fewer = conn.execute("SELECT llm_encode('the them there', 'train_v')").fetchone()[0]
    assert len(fewer) >= len(ids)


def test_a_small_corpus_runs_out_of_merges(conn, drop_trained):
    """'abab': merge a+b, then ab+ab, then nothing is left: 256 bytes, 2 merges, <|endoftext|>."""
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    assert conn.execute("SELECT llm_bpe_train('train_n', ARRAY['abab'], 1000)").fetchone()[0] == 259
    assert trained_rows(conn, "train_n")[1] == [("a", "b"), ("ab", "ab")]
    assert any("259 tokens, not 1000" in n for n in notices), notices
    # ' ' is the byte token 220 ('Ġ'), as in GPT-2's vocab.json
    assert conn.execute("SELECT llm_encode('abab ab', 'train_n')").fetchone()[0] == [257, 220, 256]


def expect_error(conn, sql, params, sqlstate, *words):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.sqlstate == sqlstate, str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_bad_arguments_change_nothing(conn, drop_trained):
    conn.execute("SELECT llm_bpe_train('train_e', ARRAY['some text to keep'], 300)")
    before = trained_rows(conn, "train_e")
    corpus_table(conn, ["x"])
    expect_error(conn, "SELECT llm_bpe_train('train_e', ARRAY['x'], 256)", [], "22023", "at least 257", "256")
    expect_error(conn, "SELECT llm_bpe_train('train_e', 'SELECT 1', 300)", [], "42804", "one text column",
                 "integer")
    expect_error(conn, "SELECT llm_bpe_train('train_e', 'SELECT line, i FROM train_corpus', 300)", [],
                 "42804", "2 column")
    expect_error(conn, "SELECT llm_bpe_train('train_e', 'SELEC line FROM train_corpus', 300)", [], "42601")
    expect_error(conn, "SELECT llm_bpe_train('train_e', 'SELECT line FROM no_such_table', 300)", [], "42P01")
    expect_error(conn, "SELECT llm_bpe_train('train_e', 'DELETE FROM train_corpus RETURNING line', 300)", [],
                 "0A000")
    expect_error(conn, "SELECT llm_bpe_train('train_e', 'CREATE TABLE train_x (a int)', 300)", [],
                 "22023", "SELECT")
    assert conn.execute("SELECT count(*) FROM train_corpus").fetchone()[0] == 1
    assert trained_rows(conn, "train_e") == before


def test_query_may_return_varchar_and_domains(conn, drop_trained):
    conn.execute("SELECT llm_bpe_train('train_c', $$SELECT 'abc abc'::varchar$$, 260)")
    assert trained_rows(conn, "train_c")[1][:2] == [("a", "b"), ("ab", "c")]


# -- exported to HuggingFace ---------------------------------------------------------

transformers = pytest.importorskip("transformers")


@pytest.fixture
def trained_model(conn, drop_trained, tok_dir):
    """A tiny GPT-2 and a tokenizer of the same name, trained here."""
    texts = CORPUS.read_text().splitlines(keepends=True) if CORPUS.exists() else sample_corpus()
    corpus_table(conn, texts)
    conn.execute("SELECT llm_bpe_train('train_m', 'SELECT line FROM train_corpus', 1024)")
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES ('train_m', 1, 2, 16, 32, 1024)")
    conn.execute("SELECT llm_init('train_m', 0)")
    return texts


def check_fast_tokenizer(conn, folder, texts):
    fast = transformers.GPT2TokenizerFast.from_pretrained(str(folder))
    assert len(fast) == 1024 and fast.eos_token_id == 1023
    # GPT2TokenizerFast splits <|endoftext|> out of any text: llm_encode does with allow_special
    ids = conn.execute("SELECT llm_encode(t, 'train_m', allow_special => true) "
                       "FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i) "
                       "ORDER BY i", [texts]).fetchall()
    assert [r[0] for r in ids] == fast(texts)["input_ids"]
    whole = "".join(texts)
    assert conn.execute("SELECT llm_encode(%s, 'train_m', allow_special => true)",
                        [whole]).fetchone()[0] == fast(whole)["input_ids"]


def test_server_export_loads_in_transformers(conn, trained_model, tok_dir):
    folder = tok_dir / "export_server"
    folder.mkdir()
    make_readable(folder)
    conn.execute("SELECT llm_export_hf('train_m', %s)", [str(folder)])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "merges.txt", "model.safetensors",
                                                         "vocab.json"]
    check_fast_tokenizer(conn, folder, trained_model)


def test_client_export_loads_in_transformers(conn, trained_model, tok_dir):
    folder = hf.export_hf(conn, "train_m", tok_dir / "export_client", progress=False)
    assert (folder / "vocab.json").read_text() and (folder / "merges.txt").read_text()
    check_fast_tokenizer(conn, folder, trained_model)
    # the two exports write the same tokenizer
    server = tok_dir / "export_server2"
    server.mkdir()
    make_readable(server)
    conn.execute("SELECT llm_export_tokenizer('train_m', %s)", [str(server)])
    assert json.loads((server / "vocab.json").read_text()) == json.loads((folder / "vocab.json").read_text())
    assert (server / "merges.txt").read_text() == (folder / "merges.txt").read_text()


def test_export_without_a_tokenizer_writes_none(conn, drop_trained, tok_dir):
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES ('train_w', 1, 1, 8, 8, 300)")
    conn.execute("SELECT llm_init('train_w', 0)")
    folder = hf.export_hf(conn, "train_w", tok_dir / "no_tokenizer", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
