"""Fuzz the tokenizer's SQL functions on a tokenizer trained in SQL: random
text of every script and control character through llm_encode, llm_decode,
llm_decode_bytes, llm_decode_stream, llm_pretokenize and llm_tokenize (ids
equal to HF `tokenizers` built from the tokenizer's own llm_bpe_vocab_json /
llm_bpe_merges_txt, and every round trip exact); random id arrays through the
decoders (in range, out of range, NULL, 2-D); random bytes through the byte
alphabet (and back); random corpora and vocabulary sizes through llm_bpe_train; random text, block
sizes, strides and validation fractions through llm_dataset_from_text, and
llm_eval over what it made.
(The vocab.json / merges.txt loaders are fuzzed with damaged files in
tests/test_tokenizer_errors.py.)
"""
from __future__ import annotations

import math

import pytest
from fuzz_harness import FuzzDB, Tally
from generators import EDGE_INTS, cases, int_array_literal

from pg_llm_lab import tokenizer

MODEL = "fuzz_tok"
V = 400

# The extension's functions this file fuzzes (test_fuzz_coverage.py checks that every one is somewhere).
COVERS = {"llm_encode", "llm_decode", "llm_decode_bytes", "llm_decode_stream", "llm_pretokenize", "llm_tokenize",
          "llm_bpe_token_bytes", "llm_bpe_bytes_token", "llm_bpe_train", "llm_bpe_vocab_json",
          "llm_bpe_merges_txt", "llm_tokenizer_info", "llm_dataset_from_text", "llm_eval"}

# Characters to build text from: ASCII, Latin, CJK, Arabic, combining marks,
# emoji (with ZWJ), digits of other systems, every kind of space, controls.
ALPHABET = ("abcXYZ019 .,!?'’\"-_\t\n\r\x01\x1b\x7f" "éßÆİı" "日本語中文" "مرحبا" "\u0301\u0308"
            "😀👍🏽\u200d👩" "١٢٣½Ⅻ" "\u00a0\u2028\u3000\u200b\ufeff" "<|endoftext|>")
CORPUS = ["the quick brown fox jumps over the lazy dog's back, 123 times!",
          "Ça va? 日本語のテキスト. naïve café — I'm here; they've gone.",
          "def f(x):\n    return x ** 2  # squares\n", "مرحبا بالعالم ١٢٣ 😀👍🏽"] * 3


def random_text(rng, longest=60) -> str:
    if rng.random() < 0.1:
        return rng.choice(["", " ", "<|endoftext|>", "a" * rng.randint(100, 400), "\r\n" * 5])
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, longest)))


@pytest.fixture(scope="module")
def hf(db_url, server_dir):
    """fuzz_tok trained in SQL, and HF tokenizers built from what SQL exports of it."""
    db = FuzzDB(db_url)
    db.run("DELETE FROM llm_tokenizer WHERE model = %s", [MODEL])
    assert db.run("SELECT llm_bpe_train(%s, %s::text[], %s)", [MODEL, CORPUS, V]).ok
    vocab = server_dir / "vocab.json"
    merges = server_dir / "merges.txt"
    vocab.write_text(db.run("SELECT llm_bpe_vocab_json(%s)", [MODEL]).value, encoding="utf-8")
    merges.write_text(db.run("SELECT llm_bpe_merges_txt(%s)", [MODEL]).value, encoding="utf-8")
    vocab_size = db.run("SELECT vocab_size FROM llm_tokenizer_info(%s)", [MODEL]).value
    yield tokenizer.hf_tokenizer(vocab, merges), vocab_size
    db.run("DELETE FROM llm_tokenizer WHERE model = %s", [MODEL])
    db.close()


def test_text_round_trips(db, hf):
    reference, _ = hf
    tally = Tally("tokenizer: text in, text out")
    for rng in cases(300, seed=61):
        text = random_text(rng)
        out = tally.record(db.run("SELECT llm_encode(%s, %s), llm_pretokenize(%s)", [text, MODEL, text]), text)
        if not tally.expect_ok(text, out, "any text encodes"):
            continue
        ids, pieces = out.rows[0]
        if ids != reference.encode(text).ids:
            tally.violation("ids differ from HF tokenizers", text, f"{ids} vs {reference.encode(text).ids}")
        if "".join(pieces) != text:
            tally.violation("pre-tokens do not concatenate to the text", text, str(pieces))
        back = db.run("SELECT llm_decode(%s, %s), llm_decode_bytes(%s, %s), "
                      "array_to_string(llm_decode_stream(%s, %s), ''), "
                      "(SELECT string_agg(token, '' ORDER BY pos) FROM llm_tokenize(%s, %s))",
                      [ids, MODEL, ids, MODEL, ids, MODEL, text, MODEL])
        tally.record(back, text)
        if tally.expect_ok(text, back, "decoding what was encoded"):
            decoded, raw, streamed, tokens = back.rows[0]
            if decoded != text or bytes(raw) != text.encode() or streamed != text:
                tally.violation("a round trip changed the text", text, repr((decoded, raw, streamed)))
            if text and tokens is None:
                tally.violation("llm_tokenize gave no rows", text, "")
    tally.finish(db)


def test_decoding_any_ids(db, hf):
    _, vocab_size = hf
    tally = Tally("tokenizer: decoding id arrays")
    for rng in cases(300, seed=62):
        ids = [rng.randrange(vocab_size) for _ in range(rng.randint(0, 12))]
        if ids and rng.random() < 0.3:
            ids[rng.randrange(len(ids))] = rng.choice(EDGE_INTS + [vocab_size, -1, -100])
        errors = set()
        if any(not 0 <= i < vocab_size for i in ids):
            errors.add("22023")
        if ids and rng.random() < 0.1:
            ids[rng.randrange(len(ids))] = None
            errors.add("22004")
        literal = int_array_literal(ids)
        if ids and rng.random() < 0.1:
            literal = "{" + ",".join("{%s}" % ("NULL" if i is None else i) for i in ids) + "}"
            errors.add("22023")
        function = rng.choice(["llm_decode", "llm_decode_bytes", "llm_decode_stream"])
        out = tally.record(db.run(f"SELECT {function}(%s::int[], %s)", [literal, MODEL]), (function, literal))
        if errors:
            tally.expect_error((function, literal), out, errors)
        else:
            tally.expect_ok((function, literal), out, "ids in the vocabulary decode")
    tally.finish(db)


def test_byte_alphabet(db):
    tally = Tally("tokenizer: the byte alphabet")
    for rng in cases(200, seed=63):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 16)))
        out = tally.record(db.run("SELECT llm_bpe_token_bytes(llm_bpe_bytes_token(%s))", [raw]), raw)
        if tally.expect_ok(raw, out, "bytes map to a token and back") and bytes(out.value) != raw:
            tally.violation("bytes -> token -> bytes changed them", raw, repr(out.value))
    tally.finish(db)


def test_training_on_any_corpus(db):
    tally = Tally("tokenizer: llm_bpe_train")
    for rng in cases(40, seed=64):
        corpus = [random_text(rng, 30) for _ in range(rng.randint(0, 5))]
        size = rng.choice([256, 257, 300, 600, 255, 0, -1, 2**31 - 1])
        out = tally.record(db.run("SELECT llm_bpe_train('fuzz_tok_train', %s::text[], %s)", [corpus, size]),
                           (corpus, size))
        if size < 257:     # 256 bytes and <|endoftext|> at least
            tally.expect_error((corpus, size), out, {"22023"})
        elif tally.expect_ok((corpus, size), out, "any corpus trains"):
            learned = out.value     # the vocabulary size: as asked, or less when no pair is left to merge
            if not 257 <= learned <= size:
                tally.violation("a vocabulary outside 257 .. vocab_size", (corpus, size), str(learned))
            if corpus:
                text = corpus[0]
                back = db.run("SELECT llm_decode(llm_encode(%s, 'fuzz_tok_train'), 'fuzz_tok_train')", [text])
                if not back.ok or back.value != text:
                    tally.violation("a trained tokenizer does not round-trip", (corpus, size), back.label)
    db.run("DELETE FROM llm_tokenizer WHERE model = 'fuzz_tok_train'")
    tally.finish(db)


def test_datasets_from_any_text(db, hf):
    """llm_dataset_from_text adds exactly the blocks the encoded text has room
    for; llm_eval scores them (a tiny random model of the tokenizer's vocabulary)."""
    _, vocab_size = hf
    tally = Tally("datasets: llm_dataset_from_text, llm_eval")
    db.run("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
           "VALUES (%s, 1, 2, 8, 16, %s)", [MODEL, vocab_size])
    assert db.run("SELECT llm_init(%s, 7)", [MODEL]).ok
    last = db.run("SELECT coalesce(max(id), 0) FROM llm_dataset").value
    for rng in cases(120, seed=65):
        text = random_text(rng, 200)
        block = rng.choice([1, 2, 8, 15, 16, 0, -3, None])
        stride = rng.choice([None, None, 1, 3, 0])
        fraction = rng.choice([0.0, 0.0, 0.1, 0.5, 0.99, 1.0, -0.1, None])
        split = f"fuzz_{rng.randrange(3)}"
        what = (text, block, stride, fraction)
        before = db.run("SELECT count(*) FROM llm_dataset WHERE id > %s", [last]).value
        out = tally.record(db.run("SELECT llm_dataset_from_text(%s, %s, %s, %s, %s, %s)",
                                  [MODEL, text, block, stride, split, fraction]), what)
        if block is None or fraction is None:
            tally.expect_error(what, out, {"22004"})
            continue
        ids = hf[0].encode(text).ids
        step = block if stride is None else stride
        n_val = int(len(ids) * fraction) if 0 <= fraction < 1 else 0
        parts = [p for p in (ids[:len(ids) - n_val], ids[len(ids) - n_val:]) if p] or [[]]
        if block < 1 or step < 1 or not 0 <= fraction < 1 or any(len(p) <= block for p in parts):
            tally.expect_error(what, out, {"22023"})
        elif tally.expect_ok(what, out, "text with room for a block"):
            want = sum(len(range(0, len(p) - block, step)) for p in parts)
            added = db.run("SELECT count(*) FROM llm_dataset WHERE id > %s", [last]).value - before
            if out.value != want or added != want:
                tally.violation("rows added differ from the blocks the text has", what,
                                f"returned {out.value}, added {added}, want {want} ({len(ids)} ids)")
    for rng in cases(30, seed=66):
        split = rng.choice(["fuzz_0", "fuzz_1", "fuzz_2", "fuzz_no_such_split"])
        max_rows = rng.choice([None, 1, 3, 0, -1])
        out = tally.record(db.run("SELECT loss, perplexity FROM llm_eval(%s, %s, %s)",
                                  [MODEL, split, max_rows]), (split, max_rows))
        have = db.run("SELECT count(*) FROM llm_dataset WHERE id > %s AND split = %s", [last, split]).value
        if max_rows is not None and max_rows < 1:
            tally.expect_error((split, max_rows), out, {"22023"})
        elif have == 0:
            tally.expect_error((split, max_rows), out, {"P0002"})
        elif tally.expect_ok((split, max_rows), out, "a split with rows"):
            loss, perplexity = out.rows[0]
            if not (0 < loss < 20 and abs(perplexity - math.exp(loss)) <= 1e-9 * perplexity):
                tally.violation("llm_eval's loss or perplexity", (split, max_rows), str(out.rows[0]))
    db.run("DELETE FROM llm_dataset WHERE id > %s", [last])
    db.run("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    tally.finish(db)
