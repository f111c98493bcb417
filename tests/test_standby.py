"""A hot standby of the lab's cluster serves generation and follows training.

PostgreSQL's own streaming replication: `server.start_standby` copies a
primary with pg_basebackup -R and starts the copy in hot standby.  While the
primary trains, learners generate on the standby; every write-back the
primary commits is replayed there, and the next call generates from the new
weights -- the same tokens the primary generates at that version -- decoded
into the standby's own shared weight cache under the replayed version.

Its own primary (not the session's server): a base backup copies everything.
"""
import threading
import time

import psycopg
import pytest

import pg_llm_lab
from pg_llm_lab import server

MODEL = "standby_lab"
PROMPT = [1, 2, 3, 4]


@pytest.fixture
def primary_and_standby(tmp_path):
    primary = server.start(tmp_path / "primary")
    try:
        pg_llm_lab.connect(primary).close()  # CREATE EXTENSION
        standby = server.start_standby(primary, tmp_path / "standby")
        try:
            yield primary, standby
        finally:
            server.stop(tmp_path / "standby")
    finally:
        server.stop(tmp_path / "primary")


def wait_for_replay(primary_conn, standby_conn, timeout=60):
    """Until the standby has replayed everything the primary has written so far."""
    target = primary_conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout
    while standby_conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0] is not True:
        assert time.monotonic() < deadline, f"the standby did not replay up to {target} in {timeout} s"
        time.sleep(0.05)


def version(conn):
    return conn.execute("SELECT version FROM llm_model_config WHERE model = %s", (MODEL,)).fetchone()[0]


def greedy(conn, n=8):
    return conn.execute("SELECT llm_generate_tokens(%s, %s, %s, temperature => 0)",
                        (MODEL, PROMPT, n)).fetchone()[0]


def test_standby_generates_while_the_primary_trains_and_follows_its_write_backs(primary_and_standby):
    primary_url, standby_url = primary_and_standby
    with pg_llm_lab.connect(primary_url) as primary, psycopg.connect(standby_url, autocommit=True) as standby:
        assert standby.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        assert standby.execute("SHOW hot_standby_feedback").fetchone()[0] == "on"
        primary.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                        " VALUES (%s, 2, 2, 32, 32, 64)", (MODEL,))
        primary.execute("SELECT llm_init(%s, 7)", (MODEL,))
        primary.execute("SELECT llm_dataset_from_tokens(%s, 16, split => %s)",
                        ([i * 7 % 64 for i in range(400)], MODEL))
        wait_for_replay(primary, standby)
        assert version(standby) == version(primary)
        assert greedy(standby) == greedy(primary)
        before = greedy(standby)

        # The primary trains (a write-back every 5 steps) while the standby generates.
        def train():
            with psycopg.connect(primary_url, autocommit=True) as trainer:
                trainer.execute(f"CALL llm_train('{MODEL}', 30, batch_size => 4, lr => 3e-2, save_every => 5,"
                                f" notice_every => 0, split => '{MODEL}')")

        trainer = threading.Thread(target=train)
        trainer.start()
        versions_seen = set()
        while trainer.is_alive():
            versions_seen.add(version(standby))
            assert len(greedy(standby, 4)) == 4
        trainer.join()

        wait_for_replay(primary, standby)
        assert version(standby) == version(primary)
        after = greedy(standby)
        assert after == greedy(primary), "the standby generates what the primary does at the same version"
        # ... from its own shared weight cache, which holds the replayed version
        cached = standby.execute("SELECT array_agg(version) FROM llm_model_cache() WHERE model = %s",
                                 (MODEL,)).fetchone()[0]
        assert version(primary) in cached
        assert after != before, "30 steps at lr 3e-2 change what a 2-layer model generates greedily"
        assert standby.execute("SELECT max(step) FROM llm_param WHERE model = %s", (MODEL,)).fetchone()[0] == 30

        # It is a standby: a learner's write is refused with a clear error, not a crash.
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            standby.execute("SELECT llm_train_step(%s, %s, %s, 1e-3)", (MODEL, PROMPT, PROMPT[1:] + [0]))
