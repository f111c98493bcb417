"""Named runs resume exactly, and llm_train_history is the history of the
weights in llm_param.

A run of CALL llm_train(..., run => 'r') is killed with SIGKILL of its
backend (a crash: the postmaster restarts every backend) before, during and
after a write-back, and resumed each time by the same CALL: its weights (data,
m, v, step) and its history come out bit for bit as those of the same run
never interrupted.  The kill points are exact: a trigger of this test makes
the backend sleep inside the step's transaction (pg_sleep) and the test kills
it there.
"""
import os
import signal
import threading
import time

import numpy as np
import psycopg
import pytest

import pg_llm_lab

SPLIT = "tr_resume"
CONFIG = dict(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=64)
RUN = dict(batch_size=2, lr=3e-3, warmup=2, seed=7, save_every=4, split=SPLIT, notice_every=0)
# the columns of llm_train_history a run determines (not its timings, row ids or model name)
HISTORY = "run, step, loss, lr, grad_norm, batch, weight_decay, beta1, beta2, eps, clip"

PAUSE_SQL = """
CREATE TABLE tr_pause (model text, at text, step int);
CREATE FUNCTION tr_pause() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tr_pause p WHERE p.model = NEW.model AND p.at = TG_TABLE_NAME
                                          AND p.step = NEW.step) THEN
        PERFORM pg_sleep(300);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tr_pause AFTER INSERT ON llm_train_log FOR EACH ROW EXECUTE FUNCTION tr_pause();
CREATE TRIGGER tr_pause AFTER INSERT ON llm_train_lineage FOR EACH ROW EXECUTE FUNCTION tr_pause();
"""


def connect(db_url, timeout=120):
    """A connection, once the server accepts them again (after a crash it recovers first)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = pg_llm_lab.connect(db_url)
            conn.execute("SELECT 1")
            return conn
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(autouse=True)
def setup(db_url):
    with connect(db_url) as c:
        c.execute(PAUSE_SQL)
        rng = np.random.default_rng(3)
        c.execute("SELECT llm_dataset_from_tokens(%s, 8, split => %s)",
                  [rng.integers(0, CONFIG["vocab_size"], 30 * 8 + 1).tolist(), SPLIT])
    yield
    with connect(db_url) as c:
        c.execute("DROP TABLE tr_pause; DROP FUNCTION tr_pause() CASCADE")
        c.execute(r"DELETE FROM llm_model_config WHERE model LIKE 'tr\_%'")
        c.execute(r"DELETE FROM llm_checkpoint WHERE model LIKE 'tr\_%'")
        c.execute("DELETE FROM llm_dataset WHERE split = %s", [SPLIT])


def new_model(conn, model):
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES (%(model)s, %(n_layer)s, %(n_head)s, %(n_embd)s, %(n_positions)s, %(vocab_size)s)",
                 CONFIG | dict(model=model))
    conn.execute("SELECT llm_init(%s, 42)", [model])


def call(conn, model, steps, **kw):
    settings = RUN | kw
    args = ", ".join(f"{k} => %({k})s" for k in settings)
    conn.execute(f"CALL llm_train(%(model)s, %(steps)s, {args})", settings | dict(model=model, steps=steps))


def weights(conn, model):
    """name -> the bytes of data, m and v (None: NULL), and step."""
    def raw(t):
        return None if t is None else np.asarray(t).tobytes()
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT name, data, m, v, step FROM llm_param WHERE model = %s", [model])
        return {name: (raw(d), raw(m), raw(v), s) for name, d, m, v, s in cur.fetchall()}


def history(conn, model):
    return conn.execute(f"SELECT {HISTORY} FROM llm_train_history WHERE model = %s ORDER BY step",
                        [model]).fetchall()


def steps_of(conn, model, where="true"):
    return [s for s, in conn.execute(f"SELECT step FROM llm_train_log WHERE model = %s AND {where} "
                                     "ORDER BY id", [model]).fetchall()]


def param_step(conn, model):
    return conn.execute("SELECT max(step) FROM llm_param WHERE model = %s", [model]).fetchone()[0]


def interrupt(db_url, model, steps, at, step, how, synchronous=True, **kw):
    """CALL llm_train in a session of its own, stopped inside the transaction of
    `step` when it INSERTs into `at` (llm_train_log: the step's row;
    llm_train_lineage: its write-back, after the UPDATE of llm_param): the
    backend is killed (how='kill', a crash) or its query cancelled
    (how='cancel'); returns once the server accepts connections again.

    The lab server commits asynchronously: a crash also loses the commits of
    the last few hundred milliseconds.  synchronous=True makes the training
    session's commits wait for the disk, so that what the crash keeps is
    exactly the steps before `step`."""
    with connect(db_url) as c:
        c.execute("INSERT INTO tr_pause VALUES (%s, %s, %s)", [model, at, step])
    trainer = connect(db_url)
    if synchronous:
        trainer.execute("SET synchronous_commit = on")
    pid = trainer.info.backend_pid
    failed = []

    def train():
        try:
            call(trainer, model, steps, **kw)
        except psycopg.Error as e:
            failed.append(e)

    thread = threading.Thread(target=train)
    thread.start()
    with connect(db_url) as watcher:
        deadline = time.monotonic() + 120
        while not watcher.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'",
                                  [pid]).fetchone():
            assert thread.is_alive() and time.monotonic() < deadline, f"the run never reached step {step}"
            time.sleep(0.05)
        if how == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            watcher.execute("SELECT pg_cancel_backend(%s)", [pid])
    thread.join(60)
    assert not thread.is_alive() and failed, "the CALL should have been stopped"
    trainer.close()
    with connect(db_url) as c:
        c.execute("DELETE FROM tr_pause")


def test_a_killed_run_resumed_is_the_run_never_interrupted(db_url):
    with connect(db_url) as conn:
        new_model(conn, "tr_whole")
        new_model(conn, "tr_killed")
        assert weights(conn, "tr_whole") == weights(conn, "tr_killed")
        call(conn, "tr_whole", 12, run="r")
        want_weights, want_history = weights(conn, "tr_whole"), history(conn, "tr_whole")
    assert [row[1] for row in want_history] == list(range(1, 13))

    # before the first write-back (step 4): nothing was written back
    interrupt(db_url, "tr_killed", 12, "llm_train_log", 3, "kill", run="r")
    with connect(db_url) as conn:
        assert param_step(conn, "tr_killed") == 0
        assert history(conn, "tr_killed") == []
        assert steps_of(conn, "tr_killed") == [1, 2]

    # in the write-back of step 8, after its UPDATE of llm_param: the weights stay at step 4
    interrupt(db_url, "tr_killed", 12, "llm_train_lineage", 8, "kill", run="r")
    with connect(db_url) as conn:
        assert param_step(conn, "tr_killed") == 4
        assert history(conn, "tr_killed") == want_history[:4]

    # after the write-back of step 8: steps 9 and 10 are lost
    interrupt(db_url, "tr_killed", 12, "llm_train_log", 10, "kill", run="r")
    with connect(db_url) as conn:
        assert param_step(conn, "tr_killed") == 8
        assert history(conn, "tr_killed") == want_history[:8]

        call(conn, "tr_killed", 12, run="r")    # the learner types the same command again
        assert weights(conn, "tr_killed") == want_weights
        assert history(conn, "tr_killed") == want_history
        # the lost steps stay in the log, unstamped; every kept step once
        assert steps_of(conn, "tr_killed", "lineage IS NULL") == [1, 2, 5, 6, 7, 9]
        assert sorted(steps_of(conn, "tr_killed", "lineage IS NOT NULL")) == list(range(1, 13))


def test_crashes_with_asynchronous_commits_keep_history_and_weights_consistent(db_url):
    """As the lab server runs: a crash may lose the last commits too, but a
    write-back, its history and its weights commit together or not at all."""
    rng = np.random.default_rng(int(os.environ.get("TEST_RESUME_SEED", "17")))
    with connect(db_url) as conn:
        new_model(conn, "tr_whole")
        new_model(conn, "tr_async")
        call(conn, "tr_whole", 16, run="r")
        want_weights, want_history = weights(conn, "tr_whole"), history(conn, "tr_whole")
    done = 0
    for _ in range(3):
        step = int(rng.integers(done + 1, 16))
        at = "llm_train_lineage" if step % 4 == 0 and rng.random() < 0.5 else "llm_train_log"
        interrupt(db_url, "tr_async", 16, at, step, "kill", synchronous=False, run="r")
        with connect(db_url) as conn:
            done = param_step(conn, "tr_async")
            assert done % 4 == 0 and done < step, (at, step, done)
            assert history(conn, "tr_async") == want_history[:done]
    with connect(db_url) as conn:
        call(conn, "tr_async", 16, run="r")
        assert weights(conn, "tr_async") == want_weights
        assert history(conn, "tr_async") == want_history


def test_a_complete_run_says_so_and_takes_no_step(conn):
    new_model(conn, "tr_done")
    call(conn, "tr_done", 5, run="r")
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    call(conn, "tr_done", 5, run="r")
    assert notices == ['llm_train: run "r" of model "tr_done" is complete: its 5 steps are done']
    assert steps_of(conn, "tr_done") == [1, 2, 3, 4, 5]


def test_a_cancelled_run_resumes_from_its_last_write_back(db_url):
    with connect(db_url) as conn:
        new_model(conn, "tr_whole")
        new_model(conn, "tr_cancelled")
        call(conn, "tr_whole", 9, run="r", save_every=3)
    interrupt(db_url, "tr_cancelled", 9, "llm_train_log", 5, "cancel", run="r", save_every=3)
    with connect(db_url) as conn:
        assert param_step(conn, "tr_cancelled") == 3
        call(conn, "tr_cancelled", 9, run="r", save_every=2)   # how often it saves may change
        assert weights(conn, "tr_cancelled") == weights(conn, "tr_whole")
        assert history(conn, "tr_cancelled") == history(conn, "tr_whole")


def test_settings_that_differ_from_the_run_are_an_error(db_url):
    with connect(db_url) as conn:
        new_model(conn, "tr_settings")
    interrupt(db_url, "tr_settings", 8, "llm_train_log", 6, "kill", run="r")
    with connect(db_url) as conn:
        before = weights(conn, "tr_settings")
        for kw, message, detail in [
                (dict(lr=1e-3), "was started with another lr", "lr = 0.003, not 0.001"),
                (dict(steps=10), "was started with another steps", "steps = 8, not 10"),
                (dict(seed=8), "another seed", "seed = 7, not 8"),
                (dict(clip=None), "another clip", "clip = 1, not NULL"),
                (dict(batch_size=3), "another batch_size", "batch_size = 2, not 3"),
                (dict(warmup=0), "another warmup", "warmup = 2, not 0")]:
            steps = kw.pop("steps", 8)
            with pytest.raises(psycopg.errors.InvalidParameterValue, match=message) as error:
                call(conn, "tr_settings", steps, run="r", **kw)
            assert detail in error.value.diag.message_detail
        conn.execute("SELECT llm_dataset_from_tokens(%s, 8, split => %s)", [list(range(9)), SPLIT])
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="another examples"):
            call(conn, "tr_settings", 8, run="r")
        assert weights(conn, "tr_settings") == before
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="run must be a name"):
            call(conn, "tr_settings", 8, run="")


def test_a_run_whose_weights_moved_on_is_refused(db_url):
    with connect(db_url) as conn:
        new_model(conn, "tr_moved")
    interrupt(db_url, "tr_moved", 8, "llm_train_log", 6, "kill", run="r")
    with connect(db_url) as conn:
        call(conn, "tr_moved", 1, warmup=0)               # a call of its own, not the run
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                           match='not where run "r" left them'):
            call(conn, "tr_moved", 8, run="r")


def test_calls_without_a_run_are_runs_of_their_own(conn):
    new_model(conn, "tr_plain")
    call(conn, "tr_plain", 3)
    call(conn, "tr_plain", 3)
    rows = conn.execute("SELECT step, lr, run FROM llm_train_log WHERE model = 'tr_plain' ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r[1] for r in rows[:3]] == [r[1] for r in rows[3:]]     # each call's own schedule
    assert {r[2] for r in rows} == {None}
    assert [r[1] for r in history(conn, "tr_plain")] == [1, 2, 3, 4, 5, 6]
    assert conn.execute("SELECT count(*) FROM llm_train_run WHERE model = 'tr_plain'").fetchone()[0] == 0


def test_history_after_a_checkpoint_load_and_single_steps(conn):
    new_model(conn, "tr_ckpt")
    call(conn, "tr_ckpt", 4)
    first = history(conn, "tr_ckpt")
    saved = conn.execute("SELECT llm_checkpoint_save('tr_ckpt')").fetchone()[0]
    call(conn, "tr_ckpt", 4)
    assert [r[1] for r in history(conn, "tr_ckpt")] == list(range(1, 9))

    conn.execute("SELECT llm_checkpoint_load('tr_ckpt', %s)", [saved])
    assert history(conn, "tr_ckpt") == first          # steps 5..8 are no longer the weights' history
    conn.execute("SELECT llm_train_step('tr_ckpt', %s, %s, 1e-3)", [[1, 2, 3], [2, 3, 4]])
    after = history(conn, "tr_ckpt")
    assert after[:4] == first and [r[1] for r in after] == [1, 2, 3, 4, 5]
    assert steps_of(conn, "tr_ckpt") == [1, 2, 3, 4, 5, 6, 7, 8, 5]

    # a checkpoint loaded into another model of the same shape brings its history along
    new_model(conn, "tr_other")
    conn.execute("SELECT llm_checkpoint_load('tr_other', %s)", [saved])
    assert history(conn, "tr_other") == first
    assert {r for r, in conn.execute("SELECT trained_as FROM llm_train_history WHERE model = 'tr_other'")} \
        == {"tr_ckpt"}

    # weights written by something else than training start a history of their own
    conn.execute("SELECT llm_init('tr_ckpt', 1)")
    assert history(conn, "tr_ckpt") == []


def test_replay_follows_the_history_not_the_lost_steps(db_url):
    with connect(db_url) as conn:
        new_model(conn, "tr_replay")
        saved = conn.execute("SELECT llm_checkpoint_save('tr_replay')").fetchone()[0]
    interrupt(db_url, "tr_replay", 8, "llm_train_log", 7, "kill", run="r")
    with connect(db_url) as conn:
        call(conn, "tr_replay", 8, run="r")
        want = weights(conn, "tr_replay")
        assert steps_of(conn, "tr_replay", "lineage IS NULL") == [5, 6]
        assert conn.execute("SELECT llm_replay('tr_replay', %s, 8)", [saved]).fetchone()[0] == 8
        assert weights(conn, "tr_replay") == want
