"""llm_encode / llm_decode: GPT-2's byte-level BPE, id for id as HuggingFace
`tokenizers` and tiktoken compute it, on GPT-2's own tokenizer and on one
trained in the database; decoding, streaming, special tokens, the cache."""
import random
import unicodedata

import psycopg
import pytest

from pg_llm_lab import tokenizer
from tokenizer_fixtures import (CORPUS, NO_CORPUS, UNICODE_SET, tok, tok_dir,  # noqa: F401 (fixtures)
                                tokenizers)

regex = pytest.importorskip("regex", reason="the pre-tokenizer is compared with the regex module")
GPT2_REGEX = regex.compile(tokenizer.GPT2_PATTERN)


def encode_all(conn, texts, model, allow_special=False):
    """llm_encode of every text, in one query."""
    rows = conn.execute("SELECT llm_encode(t, %s, %s) FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i) "
                        "ORDER BY i", [model, allow_special, texts]).fetchall()
    return [row[0] for row in rows]


def decode_all(conn, id_lists, model, function="llm_decode"):
    return [conn.execute(f"SELECT {function}(%s::int[], %s)", [ids, model]).fetchone()[0]
            for ids in id_lists]


# -- the pre-tokenizer ---------------------------------------------------------

def assigned_characters() -> list[str]:
    """Every character this Python's Unicode assigns (the version the C tables
    come from), but surrogates and NUL (text cannot hold them)."""
    return [chr(cp) for cp in range(1, 0x110000)
            if unicodedata.category(chr(cp)) not in ("Cn", "Cs")]


def test_pretokenizer_matches_the_regex_on_every_character(conn):
    """Each character in the contexts where its class matters (after a
    letter, a digit, a space, an apostrophe, itself, before a newline)."""
    chars = assigned_characters()
    for start in range(0, len(chars), 8000):
        text = "".join(f"x{c}{c}1 {c}'{c}\n{c} \t{c}" for c in chars[start:start + 8000])
        pieces = conn.execute("SELECT llm_pretokenize(%s)", [text]).fetchone()[0]
        expected = GPT2_REGEX.findall(text)
        if pieces != expected:
            at = next(i for i, (a, b) in enumerate(zip(pieces, expected)) if a != b)
            pytest.fail(f"piece {at}: {pieces[at]!r} != {expected[at]!r} (context {expected[at - 3:at + 3]!r})")


def test_pretokenizer_on_the_unicode_set(conn):
    for text in UNICODE_SET:
        assert conn.execute("SELECT llm_pretokenize(%s)", [text]).fetchone()[0] == GPT2_REGEX.findall(text), text


def test_pretokenizer_contractions_and_spaces(conn):
    """Written out by hand: the pattern's lower-case contractions, and the
    last space of a run starting the next word."""
    got = conn.execute("SELECT llm_pretokenize(%s)", ["it's IT'S   you\n\n 're"]).fetchone()[0]
    assert got == ["it", "'s", " IT", "'", "S", "  ", " you", "\n\n", " '", "re"]


# -- encoding: parity with HF tokenizers and tiktoken ------------------------------

def test_unicode_set_parity(conn, tok):
    ids = encode_all(conn, UNICODE_SET, tok.model)
    for text, got in zip(UNICODE_SET, ids):
        assert got == tok.hf.encode(text).ids, text
        if tok.tiktoken is not None:
            assert got == tok.tiktoken.encode_ordinary(text), text


def test_unicode_set_round_trip(conn, tok):
    ids = encode_all(conn, UNICODE_SET, tok.model)
    assert decode_all(conn, ids, tok.model) == UNICODE_SET
    assert [bytes(b) for b in decode_all(conn, ids, tok.model, "llm_decode_bytes")] == \
           [t.encode() for t in UNICODE_SET]


def test_every_character_parity(conn, tok):
    """All assigned characters, in runs that mix the classes."""
    chars = assigned_characters()
    random.Random(7).shuffle(chars)
    texts = ["".join(chars[i:i + 40]) + " " + "".join(chars[i + 40:i + 60]) + "'s 12\n"
             for i in range(0, len(chars), 60)]
    got = encode_all(conn, texts, tok.model)
    expected = tok.hf.encode_batch(texts)
    bad = [t for t, g, e in zip(texts, got, expected) if g != e.ids]
    assert not bad, f"{len(bad)} texts differ from HF, e.g. {bad[0]!r}"
    if tok.tiktoken is not None:
        assert got == tok.tiktoken.encode_ordinary_batch(texts)
    assert decode_all(conn, got[:200], tok.model) == texts[:200]


@pytest.fixture(scope="module")
def corpus():
    if not CORPUS.exists():
        pytest.skip(NO_CORPUS)
    return CORPUS.read_text()


def test_whole_corpus_parity(conn, tok, corpus):
    ids = conn.execute("SELECT llm_encode(%s, %s)", [corpus, tok.model]).fetchone()[0]
    assert ids == tok.hf.encode(corpus).ids
    if tok.tiktoken is not None:
        assert ids == tok.tiktoken.encode_ordinary(corpus)
    if tok.model == "tok_gpt2":
        assert len(ids) == 338025  # shared/data/README.md
    assert conn.execute("SELECT llm_decode(%s, %s) = %s", [ids, tok.model, corpus]).fetchone()[0]


def test_every_line_parity(conn, tok, corpus):
    lines = corpus.splitlines(keepends=True)
    assert len(lines) == 40000
    got = encode_all(conn, lines, tok.model)
    expected = [e.ids for e in tok.hf.encode_batch(lines)]
    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert not bad, f"{len(bad)} lines differ from HF, the first: {lines[bad[0]]!r}"
    if tok.tiktoken is not None:
        assert got == tok.tiktoken.encode_ordinary_batch(lines)
    assert decode_all(conn, got[:2000], tok.model) == lines[:2000]


# -- special tokens -----------------------------------------------------------------

def test_endoftext_is_text_unless_allowed(conn, tok):
    text = "a<|endoftext|>b <|endoftext|><|endoftext|>\n<|endoftext"
    eot = conn.execute("SELECT eot_id FROM llm_tokenizer_info(%s)", [tok.model]).fetchone()[0]
    assert eot == (50256 if tok.model == "tok_gpt2" else
                   conn.execute("SELECT vocab_size - 1 FROM llm_tokenizer_info(%s)", [tok.model]).fetchone()[0])
    plain = conn.execute("SELECT llm_encode(%s, %s)", [text, tok.model]).fetchone()[0]
    assert eot not in plain
    assert plain == tok.hf.encode(text).ids
    special = conn.execute("SELECT llm_encode(%s, %s, allow_special => true)", [text, tok.model]).fetchone()[0]
    parts = text.split("<|endoftext|>")
    pieces = [tok.hf.encode(p).ids for p in parts]
    assert special == pieces[0] + [eot] + pieces[1] + [eot] + pieces[2] + [eot] + pieces[3]
    if tok.tiktoken is not None:
        assert special == tok.tiktoken.encode(text, allowed_special="all")
        assert plain == tok.tiktoken.encode(text, disallowed_special=())
    for ids in (plain, special):
        assert conn.execute("SELECT llm_decode(%s, %s)", [ids, tok.model]).fetchone()[0] == text


def test_info_names_the_special_tokens(conn, tok):
    info = conn.execute("SELECT vocab_size, merges, special_tokens FROM llm_tokenizer_info(%s)",
                        [tok.model]).fetchone()
    tokens = tokenizer.read_vocab(tok.vocab)
    merges = tokenizer.read_merges(tok.merges)
    assert info == (len(tokens), len(merges), ["<|endoftext|>"])


# -- decoding ----------------------------------------------------------------------------

def random_id_lists(vocab_size, seed=0, count=300):
    """Random ids, biased to byte tokens (ids < 256) so that characters get cut."""
    rng = random.Random(seed)
    return [[rng.randrange(256) if rng.random() < 0.6 else rng.randrange(vocab_size)
             for _ in range(rng.randrange(1, 30))] for _ in range(count)]


def vocab_bytes(tok) -> list[bytes]:
    return [tokenizer.token_bytes(t) for t in tokenizer.read_vocab(tok.vocab)]


def test_decode_invalid_utf8_like_hf(conn, tok):
    """Bytes that are not UTF-8 become U+FFFD exactly where HF's ByteLevel
    decoder (Rust's from_utf8_lossy) and Python's errors="replace" put them;
    NUL too, since text cannot hold it."""
    table = vocab_bytes(tok)
    id_lists = random_id_lists(len(table))
    got = decode_all(conn, id_lists, tok.model)
    for ids, text in zip(id_lists, got):
        raw = b"".join(table[i] for i in ids)
        assert text == raw.decode("utf-8", errors="replace").replace("\0", "\ufffd"), ids
        assert text == tok.hf.decode(ids).replace("\0", "\ufffd"), ids
    raw = decode_all(conn, id_lists, tok.model, "llm_decode_bytes")
    assert [bytes(r) for r in raw] == [b"".join(table[i] for i in ids) for ids in id_lists]


def unfinished_tail(data: bytes) -> int:
    """How many bytes at the end of data start one UTF-8 character that more
    bytes could still finish (0..3)."""
    for n in (1, 2, 3):
        tail = data[-n:]
        if len(tail) < n:
            break
        lead = tail[0]
        total = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0
        if total <= n:
            continue
        for second in (range(0x80, 0xC0) if n == 1 else [0x80]):
            completion = (bytes([second]) if n == 1 else b"") + b"\x80" * (total - n - (n == 1))
            try:
                (tail + completion).decode("utf-8")
                return n
            except UnicodeDecodeError:
                pass
    return 0


def test_decode_stream_emits_whole_characters(conn, tok):
    """llm_decode_stream emits after each token all the text its bytes so far
    decide: everything but a character that later bytes could still finish
    (bytes that can never become one are U+FFFD at once); at the end, the rest."""
    table = vocab_bytes(tok)
    id_lists = random_id_lists(len(table), seed=1) + \
        encode_all(conn, ["👨‍👩‍👧‍👦 日本語 é", "😀" * 5], tok.model)
    for ids in id_lists:
        pieces = conn.execute("SELECT llm_decode_stream(%s::int[], %s)", [ids, tok.model]).fetchone()[0]
        expected, emitted = [], ""
        for k in range(len(ids)):
            data = b"".join(table[i] for i in ids[:k + 1])
            if k < len(ids) - 1:
                data = data[:len(data) - unfinished_tail(data)]
            text = data.decode("utf-8", errors="replace").replace("\0", "\ufffd")
            assert text.startswith(emitted)
            expected.append(text[len(emitted):])
            emitted = text
        assert pieces == expected, ids
        assert "".join(pieces) == conn.execute("SELECT llm_decode(%s::int[], %s)", [ids, tok.model]).fetchone()[0]
    family = encode_all(conn, ["👨‍👩"], tok.model)[0]
    pieces = conn.execute("SELECT llm_decode_stream(%s::int[], %s)", [family, tok.model]).fetchone()[0]
    assert "".join(pieces) == "👨‍👩" and "\ufffd" not in "".join(pieces)
    assert "" in pieces  # some token ends inside a character, and waits for the next


def test_empty_inputs(conn, tok):
    assert conn.execute("SELECT llm_encode('', %s)", [tok.model]).fetchone()[0] == []
    assert conn.execute("SELECT llm_decode('{}', %s)", [tok.model]).fetchone()[0] == ""
    assert conn.execute("SELECT llm_decode_stream('{}', %s)", [tok.model]).fetchone()[0] == []
    assert conn.execute("SELECT llm_pretokenize('')").fetchone()[0] == []


def test_tokenize_rows(conn, tok):
    rows = conn.execute("SELECT pos, id, token, bytes FROM llm_tokenize(%s, %s)",
                        ["Hello wörld", tok.model]).fetchall()
    ids = tok.hf.encode("Hello wörld").ids
    vocab = tokenizer.read_vocab(tok.vocab)
    assert [(r[0], r[1], r[2], bytes(r[3])) for r in rows] == \
           [(k + 1, i, vocab[i], tokenizer.token_bytes(vocab[i])) for k, i in enumerate(ids)]


def test_token_bytes_functions(conn):
    byte_chars = tokenizer.bytes_to_unicode()
    every_byte = bytes(range(256))
    text = "".join(byte_chars[b] for b in every_byte)
    assert bytes(conn.execute("SELECT llm_bpe_token_bytes(%s)", [text]).fetchone()[0]) == every_byte
    assert conn.execute("SELECT llm_bpe_bytes_token(%s)", [every_byte]).fetchone()[0] == text
    assert bytes(conn.execute("SELECT llm_bpe_token_bytes('Ġthe€')").fetchone()[0]) == " the€".encode()


# -- errors ------------------------------------------------------------------------------------

def expect_error(conn, sql, params, sqlstate, *words):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.sqlstate == sqlstate, str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_errors(conn, tok):
    n = conn.execute("SELECT vocab_size FROM llm_tokenizer_info(%s)", [tok.model]).fetchone()[0]
    expect_error(conn, "SELECT llm_encode('x', 'tok_nope')", [], "42704", 'unknown tokenizer "tok_nope"')
    expect_error(conn, "SELECT llm_decode('{1}', 'tok_nope')", [], "42704", "tok_nope")
    for bad in (n, -1):
        expect_error(conn, "SELECT llm_decode(%s, %s)", [[1, 2, bad], tok.model], "22023",
                     f"token id {bad} at position 3", f"0..{n - 1}", tok.model)
        for function in ("llm_decode_stream", "llm_decode_bytes"):
            expect_error(conn, f"SELECT {function}(%s, %s)", [[bad], tok.model], "22023", function, str(bad))
    expect_error(conn, "SELECT llm_decode('{1,NULL}', %s)", [tok.model], "22004", "NULL")


# -- the cache and its version ---------------------------------------------------------------

def test_cache_follows_writes(conn, tokenizers):
    """Every write to the tables gives a new version and the next call reloads:
    a learner's UPDATE changes what llm_encode returns."""
    trained = tokenizers("trained")
    conn.execute("SELECT llm_tokenizer_cache_clear()")
    before = conn.execute("SELECT llm_encode('the the', %s)", [trained.model]).fetchone()[0]
    (version, loads), = conn.execute("SELECT version, loads FROM llm_tokenizer_cache() WHERE model = %s",
                                     [trained.model]).fetchall()
    conn.execute("SELECT llm_encode('again', %s)", [trained.model])
    assert conn.execute("SELECT version, loads FROM llm_tokenizer_cache() WHERE model = %s",
                        [trained.model]).fetchone() == (version, loads)        # cached
    with conn.transaction():
        # forget the last merge that made a token of "the the"
        rank = conn.execute('SELECT max(m.rank) FROM llm_bpe_merges m JOIN llm_bpe_vocab v '
                            'ON v.model = m.model AND v.token = m."left" || m."right" '
                            'WHERE m.model = %s AND v.id = ANY(%s)', [trained.model, before]).fetchone()[0]
        conn.execute("DELETE FROM llm_bpe_merges WHERE model = %s AND rank = %s", [trained.model, rank])
        after = conn.execute("SELECT llm_encode('the the', %s)", [trained.model]).fetchone()[0]
        assert after != before and len(after) > len(before)
        new_version, new_loads = conn.execute("SELECT version, loads FROM llm_tokenizer_cache() "
                                              "WHERE model = %s", [trained.model]).fetchone()
        assert new_version > version and new_loads == loads + 1
        raise psycopg.Rollback()
    # rolled back: the old rows, the old version, the old ids
    assert conn.execute("SELECT llm_encode('the the', %s)", [trained.model]).fetchone()[0] == before
    assert conn.execute("SELECT version FROM llm_tokenizer_cache() WHERE model = %s",
                        [trained.model]).fetchone()[0] == version


# -- long input, cancel, the generated tables ---------------------------------------------

def test_long_pieces_take_the_heap_path(conn, tok):
    """A piece of 100 kB (no space in it) is encoded as HF encodes it, in O(n log n)."""
    for text in ("a" * 100_000, "ab" * 50_000 + "!", "🙂" * 20_000):
        ids = conn.execute("SELECT llm_encode(%s, %s)", [text, tok.model]).fetchone()[0]
        assert ids == tok.hf.encode(text).ids
        assert conn.execute("SELECT llm_decode(%s, %s) = %s", [ids, tok.model, text]).fetchone()[0]


def test_cancel_leaves_the_cache_usable(conn, tok):
    """statement_timeout stops a long encode (57014); the next call is right."""
    text = " ".join(f"w{i}x{i * 7919 % 104729}" for i in range(400_000))   # 5 MB of distinct pieces
    with pytest.raises(psycopg.errors.QueryCanceled):
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '20ms'")
            conn.execute("SELECT cardinality(llm_encode(%s, %s))", [text * 4, tok.model])
    sample = text[:5000]
    assert conn.execute("SELECT llm_encode(%s, %s)", [sample, tok.model]).fetchone()[0] == tok.hf.encode(sample).ids


def test_unicode_tables_are_generated_from_this_python():
    """extension/src/tokenizer/unicode_tables.h is what tools/gen_unicode_tables.py
    writes (checked when this Python has the header's Unicode version)."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    header = (root / "extension/src/tokenizer/unicode_tables.h").read_text()
    if f'LLM_UNICODE_VERSION "{unicodedata.unidata_version}"' not in header:
        pytest.skip(f"the header is not from Unicode {unicodedata.unidata_version} (this Python's)")
    result = subprocess.run([sys.executable, str(root / "tools/gen_unicode_tables.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
