"""Bad tokenizer files: every one is an ERROR with a fitting SQLSTATE, never a
crash, and the tokenizer's rows (and version) stay exactly as they were.

    58P01 undefined_file                  no such file
    XX001 data_corrupted                  empty, or vocab.json cut inside its object
    22P03 invalid_binary_representation   bad JSON or UTF-8, id gaps, duplicates, bad lines
    22000 data_exception                  vocab and merges that do not belong together
    42602 / 42809 / 42501                 relative path / a directory / no right to read files

The client-side loader (pg_llm_lab.tokenizer.load_tokenizer) applies the same
rules with a ValueError.  A seeded fuzz test damages small files at random:
the server accepts exactly what the Python reader accepts, with the same rows.
"""
import json
import random

import psycopg
import pytest

from pg_llm_lab import tokenizer
from tokenizer_fixtures import make_readable, tok_dir  # noqa: F401 (fixture)

MODEL = "tok_err"
BYTES = [tokenizer.bytes_to_unicode()[b] for b in sorted(tokenizer.bytes_to_unicode(),
                                                           key=lambda b: tokenizer.bytes_to_unicode()[b])]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("Ġa", "n")]
TOKENS = BYTES + [a + b for a, b in MERGES] + ["<|endoftext|>"]


def vocab_bytes(tokens=TOKENS, **dump) -> bytes:
    return json.dumps({t: i for i, t in enumerate(tokens)}, **dump).encode()


def merges_bytes(merges=MERGES, header=True, newline="\n") -> bytes:
    lines = (["#version: 0.2"] if header else []) + [f"{a} {b}" for a, b in merges]
    return (newline.join(lines) + newline).encode()


GOOD_VOCAB = vocab_bytes()
GOOD_MERGES = merges_bytes()


def write(folder, name, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    make_readable(path)
    return str(path)


def snapshot(conn):
    return conn.execute("""
        SELECT (SELECT version FROM llm_tokenizer WHERE model = %(m)s),
               (SELECT md5(string_agg(id || ':' || token, ',' ORDER BY id)) FROM llm_bpe_vocab WHERE model = %(m)s),
               (SELECT md5(string_agg(rank || ':' || "left" || ' ' || "right", ',' ORDER BY rank))
                FROM llm_bpe_merges WHERE model = %(m)s)""", {"m": MODEL}).fetchone()


@pytest.fixture
def loaded(conn, tok_dir):
    """MODEL loaded from the good files: its snapshot."""
    conn.execute("SELECT pg_llm_load_bpe(%s, %s, %s)",
                 [write(tok_dir, "good_vocab.json", GOOD_VOCAB), write(tok_dir, "good_merges.txt", GOOD_MERGES),
                  MODEL])
    assert conn.execute("SELECT llm_encode(' then in', %s)", [MODEL]).fetchone()[0] == \
        [256 + 2, TOKENS.index("n"), TOKENS.index("Ġ"), 256 + 3]    # " the" "n" " " "in"
    yield snapshot(conn)
    conn.execute("DELETE FROM llm_tokenizer WHERE model = %s", [MODEL])


def expect_error(conn, sql, params, sqlstate, *words):
    with pytest.raises(psycopg.Error) as info:
        with conn.transaction():
            conn.execute(sql, params)
    assert info.value.sqlstate == sqlstate, str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert conn.execute("SELECT 1").fetchone()[0] == 1  # the backend is alive
    return info.value


# -- vocab.json -------------------------------------------------------------------

BAD_VOCAB = {
    "empty": (b"", "XX001", "empty"),
    "truncated": (GOOD_VOCAB[:len(GOOD_VOCAB) // 2], "XX001", "truncated"),
    "only white space": (b" \n", "XX001", "truncated"),
    "not JSON": (b"hello", "22P03", "not a JSON object"),
    "an array": (b'["a", "b"]', "22P03", "not a JSON object"),
    "no colon": (b'{"a" 0}', "22P03", "expected ':'"),
    "trailing comma": (b'{"a": 0,}', "22P03", "expected a token"),
    "no tokens": (b"{}", "22P03", "no tokens"),
    "an id gap": (b'{"a": 0, "b": 2}', "22P03", "ids must be 0..1"),
    "an id twice": (b'{"a": 0, "b": 0, "c": 1}', "22P03", "gives id 0 to both"),
    "a token twice": (b'{"a": 0, "a": 1}', "22P03", "twice"),
    "the same token escaped": (b'{"a": 0, "\\u0061": 1}', "22P03", "twice"),
    "a negative id": (b'{"a": -1}', "22P03", "negative"),
    "a fractional id": (b'{"a": 0.5}', "22P03", "integer"),
    "an exponent": (b'{"a": 1e2}', "22P03", "integer"),
    "a string id": (b'{"a": "0"}', "22P03", "integer"),
    "a leading zero": (b'{"a": 00}', "22P03", "leading zero"),
    "a huge id": (b'{"a": 99999999999}', "22P03", "too large"),
    "not UTF-8": (GOOD_VOCAB.replace(b'"!"', b'"\xff"'), "22P03", "UTF-8"),
    "a lone surrogate": (b'{"\\ud800": 0}', "22P03", "surrogate"),
    "an escaped NUL": (b'{"a\\u0000": 0}', "22P03", "\\u0000"),
    "a raw control character": (b'{"a\tb": 0}', "22P03", "control character"),
    "an unknown escape": (b'{"a\\q": 0}', "22P03", "escape"),
    "an empty token": (b'{"": 0}', "22P03", "empty"),
    "more after the object": (b'{"a": 0} {}', "22P03", "more after"),
}


@pytest.mark.parametrize("case", list(BAD_VOCAB))
def test_bad_vocab(conn, loaded, tok_dir, case):
    data, sqlstate, words = BAD_VOCAB[case]
    path = write(tok_dir, "bad_vocab.json", data)
    err = expect_error(conn, "SELECT pg_llm_load_bpe_vocab(%s, %s)", [path, MODEL], sqlstate, words)
    assert path in str(err)
    expect_error(conn, "SELECT pg_llm_load_bpe(%s, %s, %s)", [path, write(tok_dir, "m.txt", GOOD_MERGES), MODEL],
                 sqlstate, words)
    assert snapshot(conn) == loaded
    with pytest.raises(ValueError):
        tokenizer.load_tokenizer(conn, path, tok_dir / "m.txt", MODEL)
    assert snapshot(conn) == loaded


# -- merges.txt -------------------------------------------------------------------

BAD_MERGES = {
    "empty": (b"", "XX001", "empty"),
    "one part": (GOOD_MERGES + b"ab\n", "22P03", "line 8 has one part"),
    "three parts": (GOOD_MERGES + b"a b c\n", "22P03", "line 8 has more than two parts"),
    "an empty line": (GOOD_MERGES.replace(b"\nh e\n", b"\n\nh e\n"), "22P03", "line 3 is empty"),
    "an empty part": (GOOD_MERGES + b"a \n", "22P03", "empty part"),
    "two spaces": (GOOD_MERGES + b"a  b\n", "22P03", "more than two parts"),
    "a merge twice": (GOOD_MERGES + b"h e\n", "22P03", 'repeats the merge "h e" of line 3'),
    "not UTF-8": (GOOD_MERGES + b"\xc3 a\n", "22P03", "UTF-8"),
    "a NUL byte": (GOOD_MERGES + b"a\0 b\n", "22P03", "NUL"),
}


@pytest.mark.parametrize("case", list(BAD_MERGES))
def test_bad_merges(conn, loaded, tok_dir, case):
    data, sqlstate, words = BAD_MERGES[case]
    path = write(tok_dir, "bad_merges.txt", data)
    err = expect_error(conn, "SELECT pg_llm_load_bpe_merges(%s, %s)", [path, MODEL], sqlstate, words)
    assert path in str(err)
    assert snapshot(conn) == loaded
    with pytest.raises(ValueError):
        tokenizer.load_tokenizer(conn, tok_dir / "good_vocab.json", path, MODEL)
    assert snapshot(conn) == loaded


def test_merges_variants_that_load(conn, loaded, tok_dir):
    """CRLF line ends, no header, no final newline: the same merges."""
    for data in (merges_bytes(newline="\r\n"), merges_bytes(header=False), GOOD_MERGES.rstrip(b"\n")):
        path = write(tok_dir, "variant.txt", data)
        assert conn.execute("SELECT pg_llm_load_bpe_merges(%s, %s)", [path, MODEL]).fetchone()[0] == len(MERGES)
        assert snapshot(conn)[1:] == loaded[1:]
        assert tokenizer.read_merges(path) == MERGES


# -- files that do not belong together ------------------------------------------------

def test_vocab_and_merges_that_do_not_fit(conn, loaded, tok_dir):
    good_vocab = tok_dir / "good_vocab.json"
    cases = {
        "a merge of an unknown token": (GOOD_VOCAB, GOOD_MERGES + "Ġan d\n".encode(), '"Ġand"'),
        "a merge whose result is missing": (vocab_bytes([t for t in TOKENS if t != "Ġthe"]), GOOD_MERGES,
                                            '"Ġthe"'),
        "a byte without a token": (vocab_bytes([t for t in TOKENS if t != "Ā"]), merges_bytes([]), "byte 0x00"),
    }
    for case, (vocab, merges, words) in cases.items():
        v, m = write(tok_dir, "v.json", vocab), write(tok_dir, "m.txt", merges)
        expect_error(conn, "SELECT pg_llm_load_bpe(%s, %s, %s)", [v, m, MODEL], "22000", "inconsistent", words)
        assert snapshot(conn) == loaded, case
        with pytest.raises(psycopg.errors.DataException):
            tokenizer.load_tokenizer(conn, v, m, MODEL)
        assert snapshot(conn) == loaded, case
    assert str(good_vocab)  # the good files are still there for the other tests


def test_paths_and_rights(conn, loaded, tok_dir):
    expect_error(conn, "SELECT pg_llm_load_bpe_vocab(%s, %s)", [str(tok_dir / "nope.json"), MODEL],
                 "58P01", "nope.json")
    expect_error(conn, "SELECT pg_llm_load_bpe_merges(%s, %s)", [str(tok_dir / "nope.txt"), MODEL],
                 "58P01", "nope.txt")
    expect_error(conn, "SELECT pg_llm_load_bpe_vocab('vocab.json', %s)", [MODEL], "42602", "not absolute")
    expect_error(conn, "SELECT pg_llm_load_bpe_merges(%s, %s)", [str(tok_dir), MODEL], "42809", "directory")
    conn.execute("DROP ROLE IF EXISTS tok_nobody")
    conn.execute("CREATE ROLE tok_nobody")
    try:
        with conn.transaction():
            conn.execute("SET LOCAL ROLE tok_nobody")
            expect_error(conn, "SELECT pg_llm_load_bpe_vocab(%s, %s)", [str(tok_dir / "good_vocab.json"), MODEL],
                         "42501", "pg_read_server_files")
    finally:
        conn.execute("DROP ROLE tok_nobody")
    assert snapshot(conn) == loaded


def test_client_loader_loads_the_same_rows(conn, loaded, tok_dir):
    conn.execute("DELETE FROM llm_tokenizer WHERE model = %s", [MODEL])
    assert tokenizer.load_tokenizer(conn, tok_dir / "good_vocab.json", tok_dir / "good_merges.txt", MODEL) == \
        (len(TOKENS), len(MERGES))
    assert snapshot(conn)[1:] == loaded[1:]


# -- fuzz ------------------------------------------------------------------------------

def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random damage: cut, flip, insert, delete, or swap a JSON character."""
    kind = rng.randrange(6)
    at = rng.randrange(len(data) + 1)
    if kind == 0:
        return data[:at]
    if kind == 1 and at < len(data):
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
    if kind == 2:
        return data[:at] + bytes([rng.choice(b'{}[]":,\\ \n-0123456789eE.u\x00\xc3\xff')]) + data[at:]
    if kind == 3:
        return data[:at] + data[at + rng.randrange(1, 4):]
    if kind == 4 and at < len(data):
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
    return data[:at] + data[at:at + rng.randrange(1, 20)] + data[at:]  # repeat a stretch


def python_reads(reader, path):
    try:
        return reader(path)
    except (ValueError, UnicodeError, RecursionError):
        return None


@pytest.mark.parametrize("which", ["vocab", "merges"])
def test_fuzz_loaders(conn, loaded, tok_dir, which):
    rng = random.Random(20240 + len(which))
    good = GOOD_VOCAB if which == "vocab" else GOOD_MERGES
    sql = f"SELECT pg_llm_load_bpe_{which}(%s, %s)"
    reader = tokenizer.read_vocab if which == "vocab" else tokenizer.read_merges
    accepted = rejected = 0
    for round_ in range(300):
        data = good
        for _ in range(rng.randrange(1, 4)):
            data = mutate(rng, data)
        path = write(tok_dir, f"fuzz_{which}", data)
        expected = python_reads(reader, path)
        if expected is None:
            rejected += 1
            with pytest.raises(psycopg.Error) as info:
                with conn.transaction():
                    conn.execute(sql, [path, MODEL])
            cut_short = which == "vocab" and good.startswith(data)
            assert info.value.sqlstate in (("XX001",) if cut_short else ("22P03", "XX001")), \
                (round_, data, str(info.value))
            assert conn.execute("SELECT 1").fetchone()[0] == 1  # the backend is alive
            assert snapshot(conn) == loaded, (round_, data)
        else:
            accepted += 1
            with conn.transaction():
                n = conn.execute(sql, [path, MODEL]).fetchone()[0]
                assert n == len(expected), (round_, data)
                if which == "vocab":
                    rows = [r[0] for r in conn.execute(
                        "SELECT token FROM llm_bpe_vocab WHERE model = %s ORDER BY id", [MODEL])]
                else:
                    rows = [tuple(r) for r in conn.execute(
                        'SELECT "left", "right" FROM llm_bpe_merges WHERE model = %s ORDER BY rank', [MODEL])]
                assert rows == expected, (round_, data)
                raise psycopg.Rollback()
            assert snapshot(conn) == loaded
    assert rejected > 100 and accepted > 5, (accepted, rejected)
