"""Streamed generation: llm_generate_stream_tokens gives the tokens of
llm_generate_tokens one row at a time, and computes each row only when a
cursor fetches it -- so rows reach the client while the model runs.
"""
import psycopg
import pytest

pytest.importorskip("transformers", reason="the test models are HF GPT-2s")
from hf_checkpoints import make_hf_model  # noqa: E402

import pg_llm_lab  # noqa: E402

STREAM = ("SELECT (r).* FROM (SELECT llm_generate_stream_tokens(%s, %s, %s, %s, %s, %s, %s, %s, %s) AS r) AS s")


@pytest.fixture(scope="module")
def models(db_url):
    with pg_llm_lab.connect(db_url) as conn:
        for name, seed in (("st_a", 0), ("st_b", 1)):
            model = make_hf_model(seed=seed, n_layer=2, n_head=2, n_embd=64, vocab_size=500, n_positions=64)
            conn.execute("DELETE FROM llm_model_config WHERE model = %s", (name,))
            pg_llm_lab.import_hf(conn, model, name, progress=False)
    yield
    with pg_llm_lab.connect(db_url) as conn:
        conn.execute("DELETE FROM llm_model_config WHERE model LIKE 'st\\_%'")


def args(model="st_a", prompt=(1, 2, 3), max_tokens=20, temperature=0.9, top_k=50, top_p=0.95, seed=7,
         stop_ids=None, repetition_penalty=1.0):
    return (model, list(prompt), max_tokens, temperature, top_k, top_p, seed, stop_ids, repetition_penalty)


def generate(conn, a):
    return conn.execute("SELECT llm_generate_tokens(%s, %s, %s, %s, %s, %s, %s, NULL, %s, %s)", a).fetchone()[0]


def cached(conn, model):
    """The weight cache's versions of `model`: (version, pins, loaded_at) each."""
    return conn.execute("SELECT version, pins, loaded_at FROM llm_model_cache() WHERE model = %s",
                        (model,)).fetchall()


class Cursor:
    """DECLARE ... FETCH 1 ... as a client that streams would run it."""

    def __init__(self, conn, a):
        self.conn = conn
        conn.execute("DECLARE gen NO SCROLL CURSOR FOR " + STREAM, a)

    def fetch(self):
        return self.conn.execute("FETCH 1 FROM gen").fetchone()


def test_stream_gives_the_tokens_of_llm_generate_tokens(conn, models):
    for a in (args(), args(temperature=0), args(max_tokens=1), args(prompt=[4] * 10, max_tokens=54),
              args(repetition_penalty=1.4, top_k=0)):
        want = generate(conn, a)
        with conn.transaction():
            cur = Cursor(conn, a)
            rows = []
            while (row := cur.fetch()) is not None:
                rows.append(row)
        assert [r[1] for r in rows] == want
        assert [r[0] for r in rows] == list(range(1, len(want) + 1))
        assert [r[2] for r in rows] == [False] * (len(want) - 1) + [True]
        # in FROM the same rows come, all at the end
        assert conn.execute("SELECT * FROM llm_generate_stream_tokens(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            a).fetchall() == rows


def test_stream_ends_at_a_stop_id(conn, models):
    greedy = generate(conn, args(temperature=0, max_tokens=30))
    stop = greedy[6]
    rows = conn.execute(STREAM, args(temperature=0, max_tokens=30, stop_ids=[999 % 500, stop])).fetchall()
    assert [r[1] for r in rows] == greedy[:greedy.index(stop) + 1]
    assert rows[-1][2] is True and not any(r[2] for r in rows[:-1])


def test_each_fetch_computes_one_more_token(conn, models):
    """Rows are made when fetched, not before: between FETCHes the stream
    holds a pin on its weights (a materialised result would hold none), so
    emptying the cache leaves them in place; other models in between do not
    disturb it, and the pin goes with the last row.  The tokens stay those
    of an uninterrupted run."""
    a = args(max_tokens=10)
    want = generate(conn, a)
    [(version, _, loaded_at)] = cached(conn, "st_a")
    with conn.transaction():
        cur = Cursor(conn, a)
        first = cur.fetch()
        assert cached(conn, "st_a") == [(version, 1, loaded_at)]
        conn.execute("SELECT llm_model_cache_clear()")
        second = cur.fetch()
        conn.execute("SELECT llm_logits('st_b', ARRAY[1])")
        rest = [cur.fetch() for _ in range(8)]
        assert cached(conn, "st_a") == [(version, 1, loaded_at)]
        assert cur.fetch() is None
        assert cached(conn, "st_a") == [(version, 0, loaded_at)]
    assert [r[1] for r in [first, second, *rest]] == want


def test_a_stream_keeps_the_weights_of_its_snapshot(conn, models):
    """Weights updated in the same transaction after DECLARE, and the cache
    emptied: the stream keeps the weights it pinned at its first FETCH, so
    its tokens stay those of the weights it started with."""
    a = args(model="st_b", max_tokens=12)
    want = generate(conn, a)
    with pytest.raises(RuntimeError):
        with conn.transaction():
            cur = Cursor(conn, a)
            rows = [cur.fetch()]
            conn.execute("UPDATE llm_param SET data = llm_fill(ARRAY[64], 0.5)"
                         " WHERE model = 'st_b' AND name = 'ln_f.bias'")
            assert generate(conn, a) != want  # the new weights write something else
            conn.execute("SELECT llm_model_cache_clear()")
            rows += [cur.fetch() for _ in range(11)]
            assert [r[1] for r in rows] == want
            raise RuntimeError("roll back")
    assert generate(conn, a) == want


@pytest.fixture
def rls_reader(conn):
    """A role that reads llm_param through row-level security: the models are shared with it."""
    name = "llm_stream_reader"
    if conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (name,)).fetchone()[0]:
        conn.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE {name}")
    conn.execute(f"CREATE ROLE {name}")
    conn.execute(f"GRANT SELECT ON llm_model_config, llm_param TO {name}")
    conn.execute(r"UPDATE llm_model_config SET shared = true WHERE model LIKE 'st\_%'")
    yield name
    conn.execute("RESET ROLE")
    conn.execute(r"UPDATE llm_model_config SET shared = false WHERE model LIKE 'st\_%'")
    conn.execute(f"DROP OWNED BY {name}")
    conn.execute(f"DROP ROLE {name}")


def test_a_stream_under_row_level_security_uses_the_cached_weights(conn, models, rls_reader):
    """A role that sees the model through a policy is served the weights
    the superuser's call decoded: none are decoded for the stream."""
    a = args(max_tokens=8)
    want = generate(conn, a)
    before = cached(conn, "st_a")
    conn.execute(f"SET ROLE {rls_reader}")
    with conn.transaction():
        cur = Cursor(conn, a)
        rows = [cur.fetch() for _ in range(8)]
        assert cur.fetch() is None
    assert [r[1] for r in rows] == want
    assert cached(conn, "st_a") == before


def test_closing_the_cursor_early_is_clean(conn, models):
    with conn.transaction():
        cur = Cursor(conn, args(max_tokens=50))
        cur.fetch()
        conn.execute("CLOSE gen")
    assert generate(conn, args(max_tokens=3)) == generate(conn, args(max_tokens=3))


@pytest.mark.parametrize("sql,error,message", [
    ("SELECT llm_generate_stream_tokens('st_a', ARRAY[1], 0)", psycopg.errors.InvalidParameterValue,
     "llm_generate_stream_tokens: max_tokens must be >= 1, got 0"),
    ("SELECT llm_generate_stream_tokens('st_a', ARRAY[1], 3, -1)", psycopg.errors.InvalidParameterValue,
     "temperature must be a finite number >= 0, got -1"),
    ("SELECT llm_generate_stream_tokens('st_a', ARRAY[1], 3, 1, -1)", psycopg.errors.InvalidParameterValue,
     "top_k must be >= 0, got -1"),
    ("SELECT llm_generate_stream_tokens('st_a', ARRAY[1], 3, 1, 0, 2)", psycopg.errors.InvalidParameterValue,
     r"top_p must be in \(0, 1\], got 2"),
    ("SELECT llm_generate_stream_tokens('st_a', ARRAY[1], 3, stop_ids => ARRAY[500])",
     psycopg.errors.InvalidParameterValue, "stop id 500 at position 1 is outside the vocabulary 0..499"),
    ("SELECT llm_generate_stream_tokens('st_a', ARRAY[1, 2], 63)", psycopg.errors.InvalidParameterValue,
     "a prompt of 2 tokens plus 63 new tokens"),
    ("SELECT llm_generate_stream_tokens('nope', ARRAY[1], 3)", psycopg.errors.UndefinedObject,
     "unknown model \"nope\""),
])
def test_stream_bad_input(conn, models, sql, error, message):
    with pytest.raises(error, match=message):
        conn.execute(sql)


def test_generate_tokens_takes_stop_ids(conn, models):
    greedy = generate(conn, args(temperature=0, max_tokens=30))
    stop = greedy[9]
    got = conn.execute("SELECT llm_generate_tokens('st_a', ARRAY[1,2,3], 30, 0, stop_ids => %s)",
                       ([stop, 499],)).fetchone()[0]
    assert got == greedy[:greedy.index(stop) + 1]
