"""PGLLMClient: each method is its SQL function with bound parameters; stream()
hands out events while the server still generates."""
import psycopg
import pytest

pytest.importorskip("transformers", reason="the test models are HF GPT-2s")
from text_models import drop, load_model, train_tokenizer  # noqa: E402

import pg_llm_lab  # noqa: E402
from pg_llm_client import Beam, PGLLMClient, StreamEvent  # noqa: E402


@pytest.fixture(scope="module")
def cl(db_url):
    with pg_llm_lab.connect(db_url) as conn:
        eot = train_tokenizer(conn, "cl")
        load_model(conn, "cl")
    yield eot
    with pg_llm_lab.connect(db_url) as conn:
        drop(conn, "cl")


@pytest.fixture
def client(conn, cl):
    return PGLLMClient(conn, model="cl")


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def test_both_import_paths_name_one_class():
    assert PGLLMClient is pg_llm_lab.PGLLMClient


def test_generate_is_llm_generate(conn, client):
    want = q(conn, "SELECT llm_generate('The cat', 20, 0.8, 40, 0.9, model => 'cl', seed => 4)")
    assert client.generate("The cat", 20, 0.8, 40, 0.9, seed=4) == want
    assert client.generate("The cat", max_tokens=20, temperature=0.8, top_k=40, top_p=0.9, seed=4) == want
    assert client.generate("The cat", 20, seed=4, repetition_penalty=1.3) == \
        q(conn, "SELECT llm_generate('The cat', 20, model => 'cl', seed => 4, repetition_penalty => 1.3)")


def test_parameters_are_bound_not_formatted(conn, client):
    prompt = "it's a'); DROP TABLE llm_param; --"
    assert client.generate(prompt, 5, 0) == q(conn, "SELECT llm_generate(%s, 5, 0, model => 'cl')", prompt)
    assert client.decode(client.encode(prompt)) == prompt
    assert q(conn, "SELECT count(*) FROM llm_param WHERE model = 'cl'") > 0


def test_stop_strings_and_ids(conn, client, cl):
    full = client.generate("The dog", 30, 0, stop_ids=[])
    stop = full[5:8]
    assert client.generate("The dog", 30, 0, stop=stop, stop_ids=[]) == full[:full.index(stop)]
    assert client.generate("The dog", 30, 0, stop=[stop, "zzz"], stop_ids=[]) == full[:full.index(stop)]


def test_stream_events_are_the_rows_of_llm_generate_stream(conn, client):
    events = list(client.stream("Once upon", max_tokens=15, temperature=0.9, seed=2, stop_ids=[]))
    rows = conn.execute("SELECT * FROM llm_generate_stream('Once upon', 15, 0.9, model => 'cl', seed => 2,"
                        " stop_ids => '{}')").fetchall()
    assert events == [StreamEvent(*r) for r in rows]
    assert len(events) == 15 and events[-1].is_complete
    assert events[-1].text == "".join(e.token for e in events) == \
        client.generate("Once upon", 15, 0.9, seed=2, stop_ids=[])


def test_stream_events_arrive_before_the_generation_ends(conn, client):
    """After the first event the server has made one token only: the
    generation still runs, holding a pin on its weights, until the last."""
    pins = lambda: q(conn, "SELECT sum(pins) FROM llm_model_cache() WHERE model = 'cl'")  # noqa: E731
    events = client.stream("Once upon", max_tokens=6, temperature=0, stop_ids=[])
    first = next(events)
    assert first.step == 1 and not first.is_complete
    assert q(conn, "SELECT count(*) FROM pg_cursors") == 1  # the cursor is still open
    assert pins() == 1
    assert [e.step for e in events] == [2, 3, 4, 5, 6]
    assert q(conn, "SELECT count(*) FROM pg_cursors") == 0
    assert pins() == 0


def test_leaving_a_stream_early_closes_it(conn, client):
    for event in client.stream("The cat", max_tokens=30):
        break
    assert q(conn, "SELECT count(*) FROM pg_cursors") == 0
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_beam_search_returns_ranked_beams(conn, client):
    beams = client.beam_search("Once upon a", beam_width=3, max_tokens=5)
    rows = conn.execute("SELECT * FROM llm_beam_search('Once upon a', 3, 5, 'cl')").fetchall()
    assert beams == [Beam(*r) for r in rows] and len(beams) == 3
    assert [b.rank for b in beams] == [1, 2, 3]
    assert all(a.score >= b.score for a, b in zip(beams, beams[1:]))
    assert all(isinstance(b.text, str) and b.token_ids for b in beams)
    never = client.beam_search("Once upon a", 4, 6, length_penalty=-1.0, early_stopping="never", num_return=2)
    assert len(never) == 2


def test_encode_decode_use_the_default_model(conn, client):
    text = "Le café 🐘"
    ids = client.encode(text)
    assert ids == q(conn, "SELECT llm_encode(%s, 'cl')", text)
    assert client.decode(ids) == text
    conn.execute("SET pg_llm.default_model = 'cl'")
    try:
        anonymous = PGLLMClient(conn)
        assert anonymous.encode(text) == ids and anonymous.decode(ids) == text
        assert anonymous.generate("The cat", 8, seed=1) == client.generate("The cat", 8, seed=1)
    finally:
        conn.execute("RESET pg_llm.default_model")


def test_errors_come_through(client):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"top_p must be in \(0, 1\], got 2"):
        client.generate("x", 5, top_p=2.0)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="beam_width must be between 1 and 256"):
        client.beam_search("x", 0, 5)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="max_tokens must be >= 1"):
        list(client.stream("x", max_tokens=0))


def test_train_calls_llm_train_with_a_progress_bar(conn, client, capsys):
    last = q(conn, "SELECT coalesce(max(id), 0) FROM llm_dataset")
    conn.execute("SELECT llm_dataset_from_text('cl', %s, 16, split => 'cl_train')",
                 [" ".join(["The cat sat on the mat. Le café est très chaud."] * 6)])
    try:
        rows = client.train(3, batch_size=2, lr=1e-3, seed=1, split="cl_train", save_every=3)
        assert [r[0] for r in rows] == sorted(r[0] for r in rows) and len(rows) == 3
        assert all(r[1] > 0 for r in rows)
        assert "3/3" in capsys.readouterr().err                    # the bar reached the end
        logged = conn.execute("SELECT step, loss FROM llm_train_log WHERE model = 'cl' ORDER BY id DESC LIMIT 3"
                              ).fetchall()[::-1]
        assert [(s, l) for s, l, *_ in rows] == logged
        with pytest.raises(TypeError, match="no setting learning_rate"):
            client.train(1, learning_rate=1e-3)

        named = dict(batch_size=2, lr=1e-3, seed=1, split="cl_train", save_every=3, run="cl_run")
        assert len(client.train(2, **named)) == 2
        assert "2/2" in capsys.readouterr().err
        assert client.train(2, **named) == []                      # the run is complete
        assert q(conn, "SELECT steps FROM llm_train_run WHERE model = 'cl' AND run = 'cl_run'") == 2
    finally:
        conn.execute("DELETE FROM llm_dataset WHERE id > %s", [last])
