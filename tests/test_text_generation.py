"""Text in, text out: llm_generate, llm_generate_stream, llm_beam_search.

A byte-level BPE tokenizer is trained in SQL (llm_bpe_train) on a small
corpus with accents, CJK and emoji, and a random GPT-2 gets its vocabulary
size: the text functions must be exactly the token functions (tested
against HF elsewhere) composed with llm_encode / llm_decode, with stop ids
and stop strings cut out, and characters split across tokens handed out
only once complete.
"""
import psycopg
import pytest

torch = pytest.importorskip("torch", reason="the test models are HF GPT-2s")
pytest.importorskip("transformers", reason="the test models are HF GPT-2s")
from text_models import CORPUS, N_POSITIONS, VOCAB, drop, load_model, train_tokenizer  # noqa: E402

import pg_llm_lab  # noqa: E402

STREAM = ("SELECT (r).* FROM (SELECT llm_generate_stream(%s, %s, %s, %s, %s, model => %s, seed => %s,"
          " stop => %s, stop_ids => %s) AS r) AS s")


def always_325(model):
    """ln_f's output is always 10 u, and only wte[325] points along u: greedy writes 325."""
    with torch.no_grad():
        u = torch.zeros(model.config.n_embd)
        u[0] = 1.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(10 * u)
        model.transformer.wte.weight[325] = 5 * u


@pytest.fixture(scope="module")
def tg(db_url):
    """Model and tokenizer 'tg'; model 'tg_notok' without a tokenizer; model
    'tg_big' (330 ids) with a 320-token tokenizer, whose greedy choice is
    always id 325.  Yields the id of <|endoftext|>."""
    with pg_llm_lab.connect(db_url) as conn:
        eot = train_tokenizer(conn, "tg")
        train_tokenizer(conn, "tg_big")
        load_model(conn, "tg")
        load_model(conn, "tg_notok")
        load_model(conn, "tg_big", vocab_size=330, tweak=always_325)
    yield eot
    with pg_llm_lab.connect(db_url) as conn:
        drop(conn, "tg%")


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def encode(conn, text):
    return q(conn, "SELECT llm_encode(%s, 'tg')", text)


def decode(conn, ids):
    return q(conn, "SELECT llm_decode(%s::int[], 'tg')", ids)


def tokens(conn, prompt_ids, n, temperature=1.0, top_k=0, top_p=1.0, seed=1, stop_ids=None):
    return q(conn, "SELECT llm_generate_tokens('tg', %s, %s, %s, %s, %s, %s, stop_ids => %s)",
             prompt_ids, n, temperature, top_k, top_p, seed, stop_ids)


def stream(conn, prompt, n, temperature=1.0, top_k=0, top_p=1.0, model="tg", seed=1, stop=None, stop_ids=None):
    """The rows of llm_generate_stream, one FETCH each, as a streaming client reads them."""
    rows = []
    with conn.transaction():
        conn.execute("DECLARE gen NO SCROLL CURSOR FOR " + STREAM,
                     (prompt, n, temperature, top_k, top_p, model, seed, stop, stop_ids))
        while (row := conn.execute("FETCH 1 FROM gen").fetchone()) is not None:
            rows.append(row)
    return rows


def test_generate_is_the_token_generation_decoded(conn, tg):
    prompt = "The cat sat"
    for seed in (1, 2, 3):
        ids = tokens(conn, encode(conn, prompt), 30, seed=seed, stop_ids=[])
        got = q(conn, "SELECT llm_generate(%s, 30, 1.0, 0, 1.0, model => 'tg', seed => %s, stop_ids => '{}')",
                prompt, seed)
        assert got == decode(conn, ids)
    # by default <|endoftext|> stops, and is not part of the text
    for seed in range(1, 40):
        ids = tokens(conn, encode(conn, prompt), 40, temperature=1.5, seed=seed, stop_ids=[tg])
        if ids[-1] == tg:
            break
    else:
        pytest.fail("no seed wrote <|endoftext|>: the case proves nothing")
    assert q(conn, "SELECT llm_generate(%s, 40, 1.5, model => 'tg', seed => %s)", prompt, seed) \
        == decode(conn, ids[:-1])


def test_endoftext_in_a_prompt_is_plain_text(conn, tg):
    prompt = "the end<|endoftext|>The"
    ids = encode(conn, prompt)
    assert tg not in ids  # as llm_encode without allow_special
    got = q(conn, "SELECT llm_generate(%s, 15, 0, model => 'tg', stop_ids => '{}')", prompt)
    assert got == decode(conn, tokens(conn, ids, 15, temperature=0, stop_ids=[]))


def test_a_fixed_seed_gives_the_same_text(conn, tg):
    sql = "SELECT llm_generate('Le café', 25, 0.9, 40, 0.95, model => 'tg', seed => %s)"
    assert q(conn, sql, 7) == q(conn, sql, 7)
    assert q(conn, sql, 7) != q(conn, sql, 8)


def test_stop_strings_end_the_text_before_them(conn, tg):
    full = q(conn, "SELECT llm_generate('The dog', 40, 0.0, model => 'tg', stop_ids => '{}')")
    assert len(full) > 12
    stop = full[8:11]
    want = full[:full.index(stop)]
    got = q(conn, "SELECT llm_generate('The dog', 40, 0.0, model => 'tg', stop_ids => '{}', stop => %s)",
            ["never appears \u2603", stop])
    assert got == want
    rows = stream(conn, "The dog", 40, temperature=0.0, stop=[stop], stop_ids=[])
    assert "".join(r[2] for r in rows) == rows[-1][3] == want
    assert rows[-1][4] and not any(r[4] for r in rows[:-1])


def test_stream_rows_add_up_to_generate(conn, tg):
    for args in (("Once upon", 30, 1.0, 0, 1.0), ("東京", 20, 0.8, 50, 0.9), ("Emoji 🐘", 25, 1.2, 0, 1.0)):
        rows = stream(conn, *args, seed=5, stop_ids=[])
        want = q(conn, "SELECT llm_generate(%s, %s, %s, %s, %s, model => 'tg', seed => 5, stop_ids => '{}')", *args)
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
        assert [r[1] for r in rows] == tokens(conn, encode(conn, args[0]), *args[1:], seed=5, stop_ids=[])
        assert "".join(r[2] for r in rows) == want
        assert [r[3] for r in rows] == ["".join(r[2] for r in rows[:i + 1]) for i in range(len(rows))]
        assert rows[-1][4] and not any(r[4] for r in rows[:-1])


def test_a_character_split_across_tokens_comes_whole(conn, tg):
    """Sampling hot over a vocabulary of mostly single bytes writes lead
    bytes followed by continuation bytes: the lead byte's row adds '' and
    the row that completes the character adds all of it."""
    found = False
    for seed in range(1, 60):
        rows = stream(conn, "café", 50, temperature=3.0, seed=seed, stop_ids=[])
        ids = [r[1] for r in rows]
        assert "".join(r[2] for r in rows) == decode(conn, ids)
        for prev, row in zip(rows, rows[1:]):
            if prev[2] == "" and row[2] and ord(row[2][0]) > 0x7F and row[2][0] != "\ufffd":
                assert q(conn, "SELECT llm_decode(ARRAY[%s]::int[], 'tg')", prev[1]) == "\ufffd"
                found = True
        if found:
            break
    assert found, "no character was split across tokens: the case proves nothing"


def test_long_prompts_keep_their_end_with_a_notice(conn, tg):
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    prompt = " ".join(CORPUS)
    ids = encode(conn, prompt)
    assert len(ids) > N_POSITIONS
    got = q(conn, "SELECT llm_generate(%s, 10, 0, model => 'tg', stop_ids => '{}')", prompt)
    room = N_POSITIONS - 10
    assert got == decode(conn, tokens(conn, ids[-room:], 10, temperature=0, stop_ids=[]))
    assert any(f"the prompt has {len(ids)} tokens; kept its last {room}" in n for n in notices)


def test_an_empty_prompt_starts_from_endoftext(conn, tg):
    got = q(conn, "SELECT llm_generate('', 12, 0, model => 'tg', stop_ids => '{}')")
    assert got == decode(conn, tokens(conn, [tg], 12, temperature=0, stop_ids=[]))


def test_default_model_setting(conn, tg):
    assert q(conn, "SELECT llm_generate('x', 1, 0, model => 'tg')") is not None  # loads pg_llm
    assert q(conn, "SHOW pg_llm.default_model") == "gpt2-small"
    want = q(conn, "SELECT llm_generate('The cat', 10, model => 'tg', seed => 3)")
    conn.execute("SET pg_llm.default_model = 'tg'")
    try:
        assert q(conn, "SELECT llm_generate('The cat', 10, seed => 3)") == want
        assert [r[3] for r in conn.execute("SELECT * FROM llm_beam_search('The cat', 2, 5)")] \
            == [r[3] for r in conn.execute("SELECT * FROM llm_beam_search('The cat', 2, 5, 'tg')")]
        conn.execute("SET pg_llm.default_model = ''")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="pg_llm.default_model is empty"):
            conn.execute("SELECT llm_generate('The cat', 10)")
    finally:
        conn.execute("RESET pg_llm.default_model")


def test_beam_search_text_is_the_token_search_decoded(conn, tg):
    prompt = "Once upon a time"
    want = conn.execute("SELECT rank, score, tokens FROM llm_beam_search_tokens('tg', %s, 3, 12, stop_ids => %s)",
                        (encode(conn, prompt), [tg])).fetchall()
    got = conn.execute("SELECT rank, score, tokens, text FROM llm_beam_search(%s, 3, 12, 'tg')",
                       (prompt,)).fetchall()
    assert [g[:3] for g in got] == want
    for _, _, ids, text in got:
        assert text == decode(conn, ids[:-1] if ids[-1] == tg else ids)


@pytest.mark.parametrize("sql,error,message", [
    ("SELECT llm_generate('hi', 0, model => 'tg')", psycopg.errors.InvalidParameterValue,
     "llm_generate: max_tokens must be >= 1, got 0"),
    ("SELECT llm_generate('hi', -3, model => 'tg')", psycopg.errors.InvalidParameterValue, "got -3"),
    ("SELECT llm_generate('hi', 64, model => 'tg')", psycopg.errors.InvalidParameterValue,
     r"max_tokens must be below the context of model \"tg\" \(n_positions = 64\), got 64"),
    ("SELECT llm_generate('hi', 5, -0.5, model => 'tg')", psycopg.errors.InvalidParameterValue,
     "temperature must be a finite number >= 0, got -0.5"),
    ("SELECT llm_generate('hi', 5, 1, -1, model => 'tg')", psycopg.errors.InvalidParameterValue,
     "top_k must be >= 0, got -1"),
    ("SELECT llm_generate('hi', 5, 1, 0, 0, model => 'tg')", psycopg.errors.InvalidParameterValue,
     r"top_p must be in \(0, 1\], got 0"),
    ("SELECT llm_generate('hi', 5, 1, 0, 1.5, model => 'tg')", psycopg.errors.InvalidParameterValue,
     r"top_p must be in \(0, 1\], got 1.5"),
    ("SELECT llm_generate('hi', 5, model => 'tg', repetition_penalty => 0)", psycopg.errors.InvalidParameterValue,
     "repetition_penalty must be a finite number > 0, got 0"),
    ("SELECT llm_generate('hi', 5, model => 'no_such_model')", psycopg.errors.UndefinedObject,
     "unknown model \"no_such_model\""),
    ("SELECT llm_generate('hi', 5, model => 'tg_notok')", psycopg.errors.UndefinedObject,
     "unknown tokenizer \"tg_notok\""),
    ("SELECT llm_generate('hi', 5, model => 'tg', stop => ARRAY[''])", psycopg.errors.InvalidParameterValue,
     "llm_generate: stop string 1 is empty"),
    ("SELECT llm_generate('hi', 5, model => 'tg', stop => ARRAY['a', NULL])", psycopg.errors.NullValueNotAllowed,
     "llm_generate: stop string 2 is NULL"),
    ("SELECT llm_generate('hi', 5, model => 'tg', stop_ids => ARRAY[320])", psycopg.errors.InvalidParameterValue,
     "stop id 320 at position 1 is outside the vocabulary 0..319"),
    ("SELECT llm_generate('hi', 3, 0, model => 'tg_big')", psycopg.errors.InvalidParameterValue,
     "model \"tg_big\" wrote token id 325, which tokenizer \"tg_big\" has no text for"),
    ("SELECT llm_generate_stream('hi', 0, model => 'tg')", psycopg.errors.InvalidParameterValue,
     "llm_generate_stream: max_tokens must be >= 1, got 0"),
    ("SELECT llm_generate_stream('hi', 5, model => 'tg_notok')", psycopg.errors.UndefinedObject,
     "unknown tokenizer \"tg_notok\""),
    ("SELECT * FROM llm_beam_search('hi', 0, 5, 'tg')", psycopg.errors.InvalidParameterValue,
     "llm_beam_search: beam_width must be between 1 and 256, got 0"),
    ("SELECT * FROM llm_beam_search('hi', 2, 0, 'tg')", psycopg.errors.InvalidParameterValue,
     "llm_beam_search: max_tokens must be >= 1, got 0"),
    ("SELECT * FROM llm_beam_search('hi', 2, 5, 'no_such_model')", psycopg.errors.UndefinedObject,
     "unknown model \"no_such_model\""),
    ("SELECT * FROM llm_beam_search('hi', 2, 5, 'tg_notok')", psycopg.errors.UndefinedObject,
     "unknown tokenizer \"tg_notok\""),
])
def test_text_functions_bad_input(conn, tg, sql, error, message):
    with pytest.raises(error, match=message):
        conn.execute(sql)


def test_null_arguments(conn, tg):
    assert q(conn, "SELECT llm_generate(NULL, 5, model => 'tg')") is None
    assert conn.execute("SELECT * FROM llm_generate_stream(NULL, 5, model => 'tg')").fetchall() == []
    assert conn.execute("SELECT * FROM llm_beam_search(NULL, 2, 5, 'tg')").fetchall() == []
