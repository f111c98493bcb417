"""CALL llm_train: a training run in one procedure call, against the PyTorch
loop on the batches it logged; bit-identical at any thread count and after a
checkpoint load; a cancel leaves llm_param at the last write-back; bad
settings are errors."""
import threading
import time

import numpy as np
import psycopg
import pytest

torch = pytest.importorskip("torch", reason="the run is compared with PyTorch")
pytest.importorskip("transformers", reason="the reference model is HF's GPT-2")

from train_reference import (TINY, AdamWSettings, ReferenceTrainer, load_into_pg,  # noqa: E402
                             make_reference_model)

SPLIT = "ts_loop"


@pytest.fixture(autouse=True)
def clean(db_url):
    yield
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(r"DELETE FROM llm_model_config WHERE model LIKE 'tl\_%'")
        c.execute(r"DELETE FROM llm_checkpoint WHERE model LIKE 'tl\_%'")
        c.execute("DELETE FROM llm_dataset WHERE split = %s", [SPLIT])


@pytest.fixture
def dataset(conn):
    rng = np.random.default_rng(0)
    stream = rng.integers(0, TINY["vocab_size"], 12 * 16 + 1)
    assert conn.execute("SELECT llm_dataset_from_tokens(%s, 16, split => %s)",
                        [stream.tolist(), SPLIT]).fetchone()[0] == 12


def train(conn, model, steps, **kw):
    settings = dict(batch_size=2, lr=3e-3, warmup=2, weight_decay=0.1, clip=1.0, seed=5,
                    save_every=3, split=SPLIT) | kw
    args = ", ".join(f"{k} => %({k})s" for k in settings)
    conn.execute(f"CALL llm_train(%(model)s, %(steps)s, {args})", settings | dict(model=model, steps=steps))


def log(conn, model):
    return conn.execute("SELECT step, loss, lr, grad_norm, batch FROM llm_train_log WHERE model = %s "
                        "ORDER BY id", [model]).fetchall()


def params(conn, model):
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT name, data FROM llm_param WHERE model = %s", [model])
        return dict(cur.fetchall())


def test_a_run_matches_the_pytorch_loop_on_its_batches(conn, dataset):
    model = make_reference_model(TINY, seed=11)
    load_into_pg(conn, model, "tl_run")
    train(conn, "tl_run", 8, min_lr=3e-4)
    rows = log(conn, "tl_run")
    assert [r[0] for r in rows] == list(range(1, 9))
    examples = dict((i, (t, y)) for i, t, y in conn.execute(
        "SELECT id, tokens, target FROM llm_dataset WHERE split = %s", [SPLIT]).fetchall())

    s = AdamWSettings(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), max_grad_norm=1.0,
                      warmup_steps=2, decay_steps=8, min_lr=3e-4)
    trainer = ReferenceTrainer(model, s)
    for step, loss, lr, grad_norm, batch in rows:
        assert len(batch) == 2
        tokens = np.array([examples[i][0] for i in batch])
        targets = np.array([examples[i][1] for i in batch])
        want = trainer.step(tokens, targets)
        assert lr == pytest.approx(want.lr, rel=1e-12)
        assert abs(loss - want.loss) <= 1e-4 * want.loss, (step, loss, want.loss)
        assert grad_norm == pytest.approx(want.grad_norm, rel=1e-4)
    data = params(conn, "tl_run")
    C = TINY["n_embd"]
    for name, p in trainer.params.items():
        want, got = p.detach().numpy(), data[name]
        if name.endswith("attn.c_attn.bias"):   # the key bias: see test_train_step.py
            want, got = np.delete(want, np.s_[C:2 * C]), np.delete(got, np.s_[C:2 * C])
        assert np.abs(got.astype(np.float64) - want).max() <= 1e-4 * np.abs(want).max(), name
    # per-step rows of llm_grad_stats, committed with the log
    assert conn.execute("SELECT count(DISTINCT step) FROM llm_grad_stats WHERE model = 'tl_run'").fetchone()[0] == 8


def test_bit_identical_at_any_thread_count(conn, dataset):
    model = make_reference_model(TINY, seed=12)
    for name, workers in (("tl_one", 1), ("tl_two", 2)):
        load_into_pg(conn, model, name)
        train(conn, name, 5, grad_workers=workers, optimizer_workers=workers)
    a, b = log(conn, "tl_one"), log(conn, "tl_two")
    assert [r[1] for r in a] == [r[1] for r in b] and [r[4] for r in a] == [r[4] for r in b]
    pa, pb = params(conn, "tl_one"), params(conn, "tl_two")
    assert all(pa[n].tobytes() == pb[n].tobytes() for n in pa)


def test_checkpoint_resume_repeats_the_losses_bit_for_bit(conn, dataset):
    load_into_pg(conn, make_reference_model(TINY, seed=13), "tl_ckpt")
    train(conn, "tl_ckpt", 3)
    saved = conn.execute("SELECT llm_checkpoint_save('tl_ckpt')").fetchone()[0]
    train(conn, "tl_ckpt", 5)
    first, weights = log(conn, "tl_ckpt")[3:], params(conn, "tl_ckpt")
    conn.execute("SELECT llm_checkpoint_load('tl_ckpt', %s)", [saved])
    train(conn, "tl_ckpt", 5)
    again = log(conn, "tl_ckpt")[8:]
    assert [r[0] for r in first] == [r[0] for r in again] == [4, 5, 6, 7, 8]
    assert [r[1] for r in first] == [r[1] for r in again]
    assert [r[4] for r in first] == [r[4] for r in again]
    after = params(conn, "tl_ckpt")
    assert all(after[n].tobytes() == weights[n].tobytes() for n in weights)


def test_cancel_leaves_the_last_write_back(db_url, conn, dataset):
    model = make_reference_model(TINY, seed=14)
    load_into_pg(conn, model, "tl_cancel")
    pid = {}
    errors = []

    def run():
        with psycopg.connect(db_url, autocommit=True) as c:
            pid["pid"] = c.info.backend_pid
            try:
                train(c, "tl_cancel", 10_000, save_every=3, decay_steps=10_000)
            except psycopg.errors.QueryCanceled as e:
                errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 60
    while time.time() < deadline and conn.execute(
            "SELECT count(*) FROM llm_train_log WHERE model = 'tl_cancel'").fetchone()[0] < 7:
        time.sleep(0.05)
    conn.execute("SELECT pg_cancel_backend(%s)", [pid["pid"]])
    t.join(60)
    assert errors, "the run was not cancelled"
    steps = conn.execute("SELECT array_agg(DISTINCT step) FROM llm_param WHERE model = 'tl_cancel'").fetchone()[0]
    logged = conn.execute("SELECT max(step) FROM llm_train_log WHERE model = 'tl_cancel'").fetchone()[0]
    assert len(steps) == 1 and steps[0] % 3 == 0 and steps[0] <= logged < steps[0] + 3, (steps, logged)
    # exactly the weights of a run that stopped there
    load_into_pg(conn, model, "tl_cancel_ref")
    train(conn, "tl_cancel_ref", steps[0], save_every=3, decay_steps=10_000)  # the same lrs
    got, want = params(conn, "tl_cancel"), params(conn, "tl_cancel_ref")
    assert all(got[n].tobytes() == want[n].tobytes() for n in want)


def test_bad_settings_are_errors(conn, dataset):
    load_into_pg(conn, make_reference_model(TINY, seed=15), "tl_bad")
    before = params(conn, "tl_bad")
    for kw, message in [(dict(n_layer=3), "n_layer = 3, but model"),
                        (dict(d=8), "d = 8, but model"),
                        (dict(lr=-1.0), "lr must be"),
                        (dict(batch_size=0), "batch_size must be"),
                        (dict(grad_workers=0), "grad_workers must be"),
                        (dict(warmup=5, decay_steps=5), "decay_steps must be"),
                        (dict(split="ts_none"), 'no examples in split "ts_none"')]:
        with pytest.raises(psycopg.Error, match=message):
            train(conn, "tl_bad", 4, **kw)
    with pytest.raises(psycopg.Error, match='unknown model "tl_nope"'):
        train(conn, "tl_nope", 4)
    with conn.transaction(), pytest.raises(psycopg.Error, match="outside a transaction block"):
        train(conn, "tl_bad", 4)
    after = params(conn, "tl_bad")
    assert all(after[n].tobytes() == before[n].tobytes() for n in before)
    assert log(conn, "tl_bad") == []


def test_replay_rebuilds_the_weights_bit_for_bit(conn, dataset):
    load_into_pg(conn, make_reference_model(TINY, seed=16), "tl_replay")
    train(conn, "tl_replay", 3)
    saved = conn.execute("SELECT llm_checkpoint_save('tl_replay')").fetchone()[0]
    train(conn, "tl_replay", 4)
    conn.execute("SELECT llm_train_step('tl_replay', %s, %s, 1e-3, clip => 0.5)",
                 [[[1, 2, 3], [4, 5, 6]], [[2, 3, -100], [5, 6, 7]]])
    want = params(conn, "tl_replay")
    assert conn.execute("SELECT llm_replay('tl_replay', %s, 8)", [saved]).fetchone()[0] == 5
    got = params(conn, "tl_replay")
    assert all(got[n].tobytes() == want[n].tobytes() for n in want)
    with pytest.raises(psycopg.errors.NoDataFound, match="has 5 of the 6 steps"):
        conn.execute("SELECT llm_replay('tl_replay', %s, 9)", [saved])
