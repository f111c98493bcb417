"""pg_llm_lab.plots: the loss curve, and live_loss watching a run another
session makes (the rows llm_train commits step by step).  Also writes the
README's loss curve picture, docs/images/loss_curve.png, from a run of a tiny GPT-2."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pg_llm_lab
from pg_llm_lab import plots

DOC_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def make_model(conn, name: str, split: str):
    """A tiny GPT-2 and the token stream (7 i) mod 64 in blocks of 16."""
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    conn.execute("DELETE FROM llm_dataset WHERE split = %s", [split])
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES (%s, 2, 2, 32, 32, 64)", [name])
    conn.execute("SELECT llm_init(%s, 0)", [name])
    conn.execute("SELECT llm_dataset_from_tokens(ARRAY(SELECT (i * 7) %% 64 FROM generate_series(0, 1600) AS i), "
                 "16, split => %s)", [split])


@pytest.fixture
def model(conn):
    make_model(conn, "tiny-gpt2", "tiny-gpt2")
    yield "tiny-gpt2"
    conn.execute("DELETE FROM llm_model_config WHERE model = 'tiny-gpt2'")
    conn.execute("DELETE FROM llm_dataset WHERE split = 'tiny-gpt2'")


def train_in_thread(db_url, model, steps, **settings):
    """CALL llm_train on a connection of its own, in a thread; returns (thread, its outcome)."""
    outcome = {}

    def run():
        with pg_llm_lab.connect(db_url) as other:
            args = ", ".join(f"{k} => {v!r}" for k, v in settings.items())
            other.execute(f"CALL llm_train('{model}', {steps}, split => '{model}', notice_every => 0, {args})")
            outcome["done_at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_live_loss_sees_the_rows_another_session_commits(conn, db_url, model):
    polls = []                                   # (when, rows) of each poll that brought rows
    since = conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
    thread, outcome = train_in_thread(db_url, model, 150, batch_size=8, lr=1e-2, save_every=1000)
    try:
        seen = plots.live_loss(conn, model, every=0.05, since=since, wait=60, timeout=300, display=False,
                               on_rows=lambda rows: polls.append((time.monotonic(), len(rows))))
    finally:
        thread.join()
    logged = plots.train_log(conn, model, since)
    assert len(logged) == 150
    assert seen["id"].tolist() == logged["id"].tolist()        # every row, once, in order
    assert seen["loss"].tolist() == logged["loss"].tolist()
    # it watched the run, not just its result: rows arrived in several polls, the first before the end
    assert len(polls) >= 2, polls
    assert polls[0][0] < outcome["done_at"] and polls[0][1] < 150


def test_live_loss_gives_up_when_no_run_starts(conn, model):
    start = time.monotonic()
    seen = plots.live_loss(conn, model, every=0.05, wait=0.3, display=False)
    assert seen.empty and time.monotonic() - start < 10


def test_live_loss_does_not_wait_for_another_models_run(conn, db_url, model):
    """A neighbour training another model (a class on one server) never keeps live_loss waiting."""
    make_model(conn, "tiny-gpt2-other", "tiny-gpt2-other")
    thread, outcome = train_in_thread(db_url, "tiny-gpt2-other", 400, batch_size=8, save_every=1000)
    try:
        while not plots.is_training(conn, "tiny-gpt2-other") and thread.is_alive():
            time.sleep(0.02)
        assert plots.is_training(conn, "tiny-gpt2-other") and not plots.is_training(conn, model)
        start = time.monotonic()
        seen = plots.live_loss(conn, model, every=0.05, wait=0.5, display=False)
        assert seen.empty and time.monotonic() - start < 5
        assert "done_at" not in outcome               # the neighbour was still training meanwhile
    finally:
        thread.join()
        conn.execute("DELETE FROM llm_model_config WHERE model = 'tiny-gpt2-other'")
        conn.execute("DELETE FROM llm_dataset WHERE split = 'tiny-gpt2-other'")


def test_loss_curve_and_the_readme_picture(conn, model):
    since = conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
    conn.execute(f"CALL llm_train('{model}', 60, batch_size => 4, lr => 1e-2, warmup => 5, seed => 1, "
                 f"save_every => 20, split => '{model}', notice_every => 0)")
    log = plots.train_log(conn, model, since)
    assert log["step"].tolist() == list(range(1, 61))
    assert log["loss"].iloc[-5:].mean() < 0.5 * log["loss"].iloc[:5].mean()
    DOC_IMAGES.mkdir(parents=True, exist_ok=True)
    fig = plots.loss_curve(conn, model, since=since, path=DOC_IMAGES / "loss_curve.png")
    loss_ax, lr_ax = fig.axes
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), log["loss"])
    np.testing.assert_allclose(lr_ax.lines[0].get_ydata(), log["lr"])
    assert (DOC_IMAGES / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
