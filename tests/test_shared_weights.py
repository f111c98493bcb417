"""One decoded copy of each model version per server (extension/src/gpt2/weight_store.c).

Sessions generating from one model share the weights one of them decoded; a
version is served to others only once committed; a version no call pins is
freed when a newer one comes, or when pg_llm.shared_cache_size needs its room;
every way a call can end (return, ERROR, cancel, a terminated backend) releases
its pin; row-level security decides per call what a role is served.

Needs PostgreSQL 17 or later (the DSM registry); 15-16 keep a cache per backend.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import psycopg
import pytest
import torch

import pg_llm_lab
from hf_checkpoints import make_hf_model

PROMPT = [1, 2, 3, 4]


@pytest.fixture(autouse=True)
def shared_server(conn):
    if conn.info.server_version < 170000:
        pytest.skip("the shared weight cache needs PostgreSQL 17+ (15-16 cache per backend)")


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def new_model(conn, name, n_embd=32, vocab=500, n_layer=2, n_positions=64, seed=1):
    """A GPT-2 registered as `name`, weights from llm_init (no download)."""
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                 " VALUES (%s, %s, 2, %s, %s, %s)", [name, n_layer, n_embd, n_positions, vocab])
    conn.execute("SELECT llm_init(%s, %s)", [name, seed])
    return name


def cached(conn, model):
    """The cache's versions of `model`: (version, pins, loaded_by, loaded_at) each."""
    return conn.execute("SELECT version, pins, loaded_by, loaded_at FROM llm_model_cache()"
                        " WHERE model = %s ORDER BY version", [model]).fetchall()


def version(conn, model):
    return q(conn, "SELECT version FROM llm_model_config WHERE model = %s", model)


def logits(conn, model):
    return q(conn, "SELECT llm_logits(%s, %s)", model, PROMPT)


def generate(conn, model, n=8, seed=7):
    return q(conn, "SELECT llm_generate_tokens(%s, %s, %s, 0.9, seed => %s)", model, PROMPT, n, seed)


def wait_for(condition, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def open_stream(session, model, n=20):
    """A streaming generation in `session` (autocommit off), one row fetched: it pins its weights."""
    session.execute("DECLARE gen NO SCROLL CURSOR FOR SELECT (r).* FROM "
                    "(SELECT llm_generate_stream_tokens(%s, %s, %s, 0.9, seed => 3) AS r) AS s",
                    [model, PROMPT, n])
    return session.execute("FETCH 1 FROM gen").fetchone()


@pytest.fixture
def cache_size(conn):
    """set(mb, *sessions): pg_llm.shared_cache_size for the server, seen by each session."""
    setting = "SELECT current_setting('pg_llm.shared_cache_size')"
    conn.execute("SELECT llm_info()")           # pg_llm loaded: its settings are defined
    before = q(conn, setting)

    def set_mb(mb, *sessions):
        conn.execute(f"ALTER SYSTEM SET pg_llm.shared_cache_size = '{mb}MB'")
        conn.execute("SELECT pg_reload_conf()")
        for s in (conn, *sessions):
            s.execute("SELECT llm_info()")
            wait_for(lambda: q(s, setting) == (f"{mb}MB" if mb else "0"), "the new pg_llm.shared_cache_size")
    yield set_mb
    conn.execute("ALTER SYSTEM RESET pg_llm.shared_cache_size")
    conn.execute("SELECT pg_reload_conf()")
    wait_for(lambda: q(conn, setting) == before, "pg_llm.shared_cache_size back to what it was")


# ---- sharing -----------------------------------------------------------------------

def test_sessions_share_one_decoded_copy(db_url, conn, cache_size):
    """Three sessions at once: one decodes, all are served; the results are
    HF's, and bit for bit those of weights decoded for the call alone."""
    name = "sw_hf"
    model = make_hf_model(seed=3, n_layer=2, n_head=2, n_embd=64, vocab_size=300, n_positions=64)
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    pg_llm_lab.import_hf(conn, model, name, progress=False)
    sessions = [pg_llm_lab.connect(db_url) for _ in range(3)]
    results = [None] * 3
    start = threading.Barrier(3)

    def run(i):
        start.wait()
        results[i] = (logits(sessions[i], name), generate(sessions[i], name))

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        [(v, pins, loaded_by, _)] = cached(conn, name)
        assert v == version(conn, name) and pins == 0
        assert loaded_by in [s.info.backend_pid for s in sessions]
    finally:
        for s in sessions:
            s.close()

    with torch.inference_mode():
        want = model(torch.tensor([PROMPT])).logits[0].numpy()
    for got_logits, got_tokens in results:
        np.testing.assert_array_equal(got_logits, results[0][0])
        assert got_tokens == results[0][1]
    assert np.abs(results[0][0] - want).max() <= 1e-4 * np.abs(want).max()

    cache_size(0)  # nothing fits: every call decodes its own copy
    conn.execute("SELECT llm_model_cache_clear()")
    notices = []
    conn.add_notice_handler(lambda n: notices.append(n.message_primary))
    np.testing.assert_array_equal(logits(conn, name), results[0][0])
    assert generate(conn, name) == results[0][1]
    assert any("pg_llm.shared_cache_size" in n and "for this call only" in n for n in notices)


def test_a_write_back_reaches_others_at_its_commit(db_url, conn):
    name = new_model(conn, "sw_train")
    before = logits(conn, name)
    v0 = version(conn, name)
    with pg_llm_lab.connect(db_url, autocommit=False) as writer:
        writer.execute("SELECT llm_train_step(%s, %s, %s, lr => 0.05)", [name, PROMPT, PROMPT[1:] + [-100]])
        inside = logits(writer, name)            # the writer sees its new weights, decoded for it alone
        assert not np.array_equal(inside, before)
        np.testing.assert_array_equal(logits(conn, name), before)
        assert [r[0] for r in cached(conn, name)] == [v0]
        writer.commit()
    after = logits(conn, name)
    np.testing.assert_array_equal(after, inside)
    [(v1, pins, loaded_by, _)] = cached(conn, name)  # the old version, unused, is gone
    assert v1 > v0 and pins == 0 and loaded_by == conn.info.backend_pid


def test_an_old_version_lives_while_pinned(db_url, conn):
    name = new_model(conn, "sw_old")
    logits(conn, name)
    v0 = version(conn, name)
    with pg_llm_lab.connect(db_url, autocommit=False) as streamer:
        open_stream(streamer, name)
        conn.execute("UPDATE llm_param SET data = llm_scale(data, 2) WHERE model = %s AND name = 'ln_f.weight'",
                     [name])
        logits(conn, name)
        v1 = version(conn, name)
        assert [(v, pins) for v, pins, *_ in cached(conn, name)] == [(v0, 1), (v1, 0)]
        streamer.execute("FETCH ALL FROM gen")
        streamer.commit()
    assert [(v, pins) for v, pins, *_ in cached(conn, name)] == [(v1, 0)]


def test_the_cap_evicts_the_least_recently_used(conn, cache_size):
    small = [new_model(conn, f"sw_lru{i}", vocab=2000, seed=i) for i in range(3)]  # 0.36 MB each
    big = new_model(conn, "sw_big", vocab=10000)                                   # 1.3 MB
    want_big = logits(conn, big)
    cache_size(1)
    for name in (small[0], small[1], small[0], small[2]):
        logits(conn, name)
    assert [len(cached(conn, name)) for name in small] == [1, 0, 1]

    notices = []
    conn.add_notice_handler(lambda n: notices.append(n.message_primary))
    np.testing.assert_array_equal(logits(conn, big), want_big)
    assert cached(conn, big) == []
    assert any(f'model "{big}" needs 1.3 MB, more than pg_llm.shared_cache_size (1 MB)' in n for n in notices)


def test_with_every_cached_version_in_use_a_call_decodes_its_own(db_url, conn, cache_size):
    small = [new_model(conn, f"sw_lru{i}", vocab=2000, seed=i) for i in range(3)]
    want = logits(conn, small[2])
    cache_size(1)
    conn.execute("SELECT llm_model_cache_clear()")
    with pg_llm_lab.connect(db_url, autocommit=False) as a, pg_llm_lab.connect(db_url, autocommit=False) as b:
        open_stream(a, small[0])
        open_stream(b, small[1])                    # 0.73 MB of 1 MB pinned
        np.testing.assert_array_equal(logits(conn, small[2]), want)
        assert cached(conn, small[2]) == []
        assert [len(cached(conn, name)) for name in small[:2]] == [1, 1]


# ---- pins are released by every way a call ends ------------------------------------

def pins(conn, model):
    return sum(p for _, p, *_ in cached(conn, model))


def test_an_error_releases_the_pin(conn):
    name = new_model(conn, "sw_err")
    generate(conn, name)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT llm_generate_tokens(%s, ARRAY[1, 99999], 3)", [name])
    assert pins(conn, name) == 0
    with pytest.raises(psycopg.errors.DivisionByZero):
        with conn.transaction():
            open_stream(conn, name)
            assert pins(conn, name) == 1
            conn.execute("SELECT 1 / 0")
    assert pins(conn, name) == 0


def test_a_terminated_backend_releases_its_pins(db_url, conn):
    name = new_model(conn, "sw_term")
    want = generate(conn, name)
    victim = pg_llm_lab.connect(db_url, autocommit=False)
    open_stream(victim, name)
    assert pins(conn, name) == 1
    pid = victim.info.backend_pid
    conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    wait_for(lambda: q(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid) == 0,
             "the terminated backend to exit")
    victim.close()
    assert pins(conn, name) == 0
    assert generate(conn, name) == want


def test_a_cancel_during_generation_leaves_the_cache_consistent(db_url, conn):
    name = new_model(conn, "sw_cancel")
    want = generate(conn, name)
    [(v, _, loaded_by, loaded_at)] = cached(conn, name)
    outcome = {}
    with pg_llm_lab.connect(db_url) as worker:
        def run():
            try:
                worker.execute("SELECT llm_generate_tokens(%s, %s, 40, 0.9, seed => i)"
                               " FROM generate_series(1, 1000000) AS i", [name, PROMPT])
            except psycopg.Error as err:
                outcome["error"] = err

        thread = threading.Thread(target=run)
        thread.start()
        wait_for(lambda: pins(conn, name) == 1, "the generation to pin its weights")
        conn.execute("SELECT pg_cancel_backend(%s)", [worker.info.backend_pid])
        thread.join(30)
        assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled)
        assert cached(conn, name) == [(v, 0, loaded_by, loaded_at)]
        assert generate(worker, name) == want


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.1])
def test_a_backend_terminated_while_decoding_leaves_no_half_copy(db_url, conn, delay):
    """Whenever the decoding backend dies, the version is then either
    cached whole or not at all, and the next call is served."""
    name = "sw_mid"
    if not q(conn, "SELECT count(*) FROM llm_model_config WHERE model = %s", name):
        new_model(conn, name, n_embd=256, vocab=30000)  # 37 MB
    want = logits(conn, name)
    conn.execute("SELECT llm_model_cache_clear()")
    victim = pg_llm_lab.connect(db_url)
    pid = victim.info.backend_pid

    def decode():
        try:
            victim.execute("SELECT llm_logits(%s, ARRAY[1])", [name])
        except psycopg.Error:
            pass                                # terminated while decoding

    thread = threading.Thread(target=decode)
    thread.start()
    time.sleep(delay)
    conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    thread.join(30)
    victim.close()
    wait_for(lambda: q(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid) == 0,
             "the terminated backend to exit")
    assert pins(conn, name) == 0
    np.testing.assert_array_equal(logits(conn, name), want)
    assert len(cached(conn, name)) == 1


# ---- row-level security decides per call ---------------------------------------------

@pytest.fixture
def learner(conn):
    """A role whose policies hide model sw_hidden from it, in llm_model_config and llm_param alike."""
    role = "llm_shared_weights_learner"
    if q(conn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", role):
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
    conn.execute(f"CREATE ROLE {role}")
    conn.execute(f"GRANT SELECT ON llm_model_config, llm_param TO {role}")
    had_rls = {t: q(conn, "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", t)
               for t in ("llm_model_config", "llm_param")}
    for table in had_rls:
        conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        conn.execute(f"CREATE POLICY sw_not_hidden ON {table} TO {role} USING (model <> 'sw_hidden')")
    yield role
    conn.execute("RESET ROLE")
    for table, had in had_rls.items():
        conn.execute(f"DROP POLICY sw_not_hidden ON {table}")
        if not had:
            conn.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    conn.execute(f"DROP OWNED BY {role}")
    conn.execute(f"DROP ROLE {role}")


def test_row_level_security_decides_and_the_cache_serves(conn, learner):
    seen, hidden = new_model(conn, "sw_seen"), new_model(conn, "sw_hidden")
    want = logits(conn, seen)                   # the superuser decodes both
    logits(conn, hidden)
    entry = cached(conn, seen)
    conn.execute(f"SET ROLE {learner}")
    with pytest.raises(psycopg.errors.UndefinedObject, match='unknown model "sw_hidden"'):
        logits(conn, hidden)
    np.testing.assert_array_equal(logits(conn, seen), want)
    assert cached(conn, seen) == entry                 # served, not decoded again
    assert cached(conn, hidden) == []                  # nor listed
    conn.execute("SELECT llm_model_cache_clear()")     # drops only what the role sees
    conn.execute("RESET ROLE")
    assert cached(conn, seen) == [] and len(cached(conn, hidden)) == 1
