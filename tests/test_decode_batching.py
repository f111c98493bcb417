"""Decode batching (extension/src/generate/batch.c): sessions generating from
the same model version at the same time compute their next-token steps in one
pass over the weights, and each gets exactly the tokens it gets alone.

The tokens "alone" come from one session at a time with pg_llm.decode_batching
off (today's path); together, sessions start at a barrier, with their own
prompts, seeds, sampling settings and thread counts.  Isolation: a session
cancelled or timed out mid-batch stops alone, a terminated backend, a stream
closed early and an error in one never change the others' tokens.

Needs PostgreSQL 17 or later (the DSM registry); on 15-16 every session
decodes alone.
"""
from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

import pg_llm_lab

MODEL = "batch_m"

# (prompt, max_new_tokens, temperature, top_k, top_p, seed, pg_llm.threads)
REQUESTS = [
    ([1, 2, 3, 4], 40, 0.9, 0, 1.0, 11, 1),
    ([5, 6], 40, 1.0, 50, 1.0, 12, 2),
    ([7, 8, 9, 10, 11, 12, 13], 36, 0.7, 0, 0.9, 13, 1),
    ([14], 40, 1.3, 0, 1.0, 14, 2),
    ([15, 16, 17], 30, 0.8, 20, 0.95, 15, 1),
    ([18, 19, 20, 21], 40, 1.0, 0, 1.0, 16, 1),
]
GENERATE = "SELECT llm_generate_tokens(%s, %s, %s, %s, %s, %s, %s)"


@pytest.fixture(scope="module")
def model(db_url):
    with pg_llm_lab.connect(db_url) as conn:
        if conn.info.server_version < 170000:
            pytest.skip("decode batching needs PostgreSQL 17+ (the DSM registry)")
        conn.execute("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
        conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                     " VALUES (%s, 3, 4, 128, 256, 3000)", [MODEL])
        conn.execute("SELECT llm_init(%s, 5)", [MODEL])
    return MODEL


def generate(conn, request, batching=True, repeat=1):
    """The request's tokens; with repeat > 1, the same generation that many
    times in one statement (a long statement to stop), the first one's tokens."""
    prompt, n, temperature, top_k, top_p, seed, threads = request
    conn.execute(f"SET pg_llm.threads = {threads}")
    conn.execute(f"SET pg_llm.decode_batching = {'on' if batching else 'off'}")
    sql = GENERATE if repeat == 1 else GENERATE + f" FROM generate_series(1, {int(repeat)})"
    return conn.execute(sql, [MODEL, prompt, n, temperature, top_k, top_p, seed]).fetchone()[0]


@pytest.fixture(scope="module")
def alone(db_url, model):
    """Each request's tokens, one session at a time, without batching."""
    with pg_llm_lab.connect(db_url) as conn:
        return [generate(conn, r, batching=False) for r in REQUESTS]


def batch_notices(conn):
    """Collect pg_llm's DEBUG1 report of the steps each generation shared."""
    seen = []
    conn.execute("SET client_min_messages = debug1")
    conn.add_notice_handler(lambda n: seen.append(n.message_primary or ""))
    return seen


def shared_steps(notices):
    """Decode steps computed in a batch with other sessions, from the reports."""
    return sum(int(m.group(1)) for n in notices
               if (m := re.search(r"decode batching: \d+ steps, (\d+) of them", n)))


def together(db_url, jobs):
    """Run jobs[i](session, i) in one session each, all released at once; their
    results (or exceptions), and each session's DEBUG1 notices."""
    sessions = [pg_llm_lab.connect(db_url) for _ in jobs]
    notices = [batch_notices(s) for s in sessions]
    for s in sessions:
        s.execute("SELECT llm_logits(%s, ARRAY[1])", [MODEL])    # weights mapped, no stagger
    results = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i):
        start.wait()
        try:
            results[i] = jobs[i](sessions[i], i)
        except Exception as e:  # noqa: BLE001 -- the test looks at it
            results[i] = e

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for s in sessions:
            s.close()
    return results, notices


def test_a_lone_session_gets_todays_tokens(db_url, model, alone):
    with pg_llm_lab.connect(db_url) as conn:
        notices = batch_notices(conn)
        assert [generate(conn, r) for r in REQUESTS] == alone
    assert shared_steps(notices) == 0
    assert any("decode batching:" in n for n in notices)


def test_sessions_together_get_the_tokens_they_get_alone(db_url, model, alone):
    """Six sessions at once, different prompts, seeds, samplers and threads:
    each gets its tokens alone, bit for bit, and the steps were batched."""
    shared = 0
    for attempt in range(3):     # the OS decides how much they overlap; retry if they did not
        results, notices = together(db_url, [lambda s, i: generate(s, REQUESTS[i])] * len(REQUESTS))
        assert results == alone
        shared = sum(shared_steps(n) for n in notices)
        if shared > 0:
            break
    assert shared > 0, "the sessions never decoded together"


def long_request(i):
    return ([1 + i, 2, 3], 200, 1.0, 0, 1.0, 100 + i, 1 + i % 2)


@pytest.fixture(scope="module")
def long_alone(db_url, model):
    with pg_llm_lab.connect(db_url) as conn:
        return [generate(conn, long_request(i), batching=False) for i in range(4)]


def wait_until_generating(conn, pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.execute("SELECT query LIKE 'SELECT llm_generate_tokens%%' FROM pg_stat_activity"
                        " WHERE pid = %s AND state = 'active'", [pid]).fetchone() == (True,):
            time.sleep(0.05)     # into its decode steps
            return
        time.sleep(0.005)
    pytest.fail("the victim never started")


@pytest.mark.parametrize("how", ["pg_cancel_backend", "statement_timeout", "pg_terminate_backend"])
def test_one_session_stopped_mid_batch_stops_alone(db_url, conn, model, long_alone, how):
    """Four long generations; the second is cancelled, times out or is
    terminated in the middle: it alone stops, the others finish with their
    own tokens, and the stopped session's slot in the batch is given back."""
    pids = {}

    def job(session, i):
        pids[i] = session.info.backend_pid
        if i != 1:
            return generate(session, long_request(i))
        # the victim generates over and over, so that it is still decoding
        # whenever the stop arrives, however fast this machine is
        if how == "statement_timeout":
            session.execute("SET statement_timeout = '150ms'")
        return generate(session, long_request(i), repeat=2000)

    def stopper():
        while 1 not in pids:
            time.sleep(0.001)
        wait_until_generating(conn, pids[1])
        if how != "statement_timeout":
            conn.execute(f"SELECT {how}(%s)", [pids[1]])

    killer = threading.Thread(target=stopper)
    killer.start()
    results, notices = together(db_url, [job] * 4)
    killer.join()
    assert isinstance(results[1], psycopg.errors.QueryCanceled if how != "pg_terminate_backend"
                      else psycopg.OperationalError), results[1]
    assert [results[i] for i in (0, 2, 3)] == [long_alone[i] for i in (0, 2, 3)]
    assert sum(shared_steps(n) for n in notices) > 0

    # the table holds no trace of the stopped session: a new lone session runs at once
    with pg_llm_lab.connect(db_url) as after:
        after.execute("SET statement_timeout = '60s'")
        assert generate(after, REQUESTS[0]) is not None


def test_errors_and_early_exits_do_not_touch_the_others(db_url, conn, model, long_alone):
    """While three sessions decode together, a fourth opens streams it closes
    after a few tokens and makes errors (a model it may not read, bad input)."""
    role = "batch_stranger"
    conn.execute(f"DROP ROLE IF EXISTS {role}")
    conn.execute(f"CREATE ROLE {role}")
    conn.execute(f"GRANT USAGE ON SCHEMA {conn.execute('SELECT current_schema()').fetchone()[0]} TO {role}")
    errors = []

    def troublemaker(session, i):
        session.autocommit = False
        for _ in range(5):
            session.execute("DECLARE gen NO SCROLL CURSOR FOR SELECT (r).* FROM "
                            "(SELECT llm_generate_stream_tokens(%s, ARRAY[3, 4], 100, seed => 9) AS r) AS s",
                            [MODEL])
            session.execute("FETCH 3 FROM gen")
            session.execute("CLOSE gen")
            session.commit()
            for sql in [f"SET LOCAL ROLE {role}; SELECT llm_generate_tokens('{MODEL}', ARRAY[1], 5)",
                        f"SELECT llm_generate_tokens('{MODEL}', ARRAY[99999], 5)"]:
                try:
                    session.execute(sql)
                except psycopg.Error as e:
                    errors.append(e.sqlstate)
                session.rollback()
        return "done"

    jobs = [lambda s, i: generate(s, long_request(i))] * 3 + [troublemaker]
    try:
        results, notices = together(db_url, jobs)
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
    assert results == long_alone[:3] + ["done"]
    assert len(errors) == 10 and all(errors), errors
