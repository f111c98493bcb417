"""The widgets and pictures of notebooks 08, 09 and 12, driven headless:
the next token's bars against a softmax computed here in numpy, the sampling
playground's bars following its sliders, the training watcher following one
model's run (and no other), the class view reading every run."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

import pg_llm_lab  # noqa: E402
from pg_llm_lab import course, plots  # noqa: E402
from pg_llm_lab.widgets import ClassView, SamplingPlayground, TrainingWatcher, training_now  # noqa: E402

CORPUS = ["To be, or not to be, that is the question.", "All the world's a stage,",
          "And all the men and women merely players."] * 10


def make_text_model(conn, name):
    """A 1-layer GPT-2 with a 300-token BPE tokenizer of its name, and its text in llm_dataset."""
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    conn.execute("DELETE FROM llm_dataset WHERE split = %s", [name])
    vocab = conn.execute("SELECT llm_bpe_train(%s, %s::text[], 300)", [name, CORPUS]).fetchone()[0]
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES (%s, 1, 2, 32, 64, %s)", [name, vocab])
    conn.execute("SELECT llm_init(%s, 3)", [name])
    conn.execute("SELECT llm_dataset_from_tokens(llm_encode(%s, %s), 16, split => %s)",
                 [" ".join(CORPUS), name, name])
    return name


@pytest.fixture
def text_model(conn):
    yield make_text_model(conn, "test-gen-widgets")
    conn.execute("DELETE FROM llm_checkpoint WHERE model = 'test-gen-widgets'")
    conn.execute("DELETE FROM llm_model_config WHERE model = 'test-gen-widgets'")
    conn.execute("DELETE FROM llm_tokenizer WHERE model = 'test-gen-widgets'")
    conn.execute("DELETE FROM llm_dataset WHERE split = 'test-gen-widgets'")


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_next_token_bars_are_the_softmax_of_the_logits(conn, text_model):
    ids = conn.execute("SELECT llm_encode('To be', %s)", [text_model]).fetchone()[0]
    logits = conn.execute("SELECT llm_logits(%s, %s, true)", [text_model, ids]).fetchone()[0][0].astype(np.float64)
    fig = plots.next_token_bars(conn, text_model, "To be", temperature=0.5, top_k=5, n=10)
    plain, drawn = fig.axes[0].containers
    want_plain = softmax(logits)
    top = np.argsort(-want_plain)[:10]
    np.testing.assert_allclose([b.get_height() for b in plain], want_plain[top], rtol=1e-5)
    sharp = softmax(logits / 0.5)
    kept = np.argsort(-sharp)[:5]
    want_drawn = np.zeros_like(sharp)
    want_drawn[kept] = sharp[kept] / sharp[kept].sum()
    np.testing.assert_allclose([b.get_height() for b in drawn], want_drawn[top], rtol=1e-5, atol=1e-7)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    decoded = [conn.execute("SELECT llm_decode(ARRAY[%s], %s)", [int(i), text_model]).fetchone()[0] for i in top]
    assert labels == [plots.token_label(t) for t in decoded]
    assert "5 of" in fig.axes[0].get_title()


def test_token_labels_show_spaces_and_newlines():
    assert plots.token_label(" the") == "␣the"
    assert plots.token_label("\n") == "\\n"
    assert plots.token_label("") == "∅"


def test_the_playground_redraws_its_bars_as_the_sliders_move(conn, text_model):
    playground = SamplingPlayground(conn, "To be", model=text_model, max_tokens=8, temperature=1.0, seed=5)
    first = playground.bars.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    playground.top_k.value = 1
    assert playground.bars.value != first
    assert "1 of" in playground._figure.axes[0].get_title()
    greedy = conn.execute("SELECT llm_generate('To be', 8, 0.0, model => %s)", [text_model]).fetchone()[0]
    assert playground.text == greedy            # top-k 1 is greedy, whatever the seed


def train_in_thread(db_url, model, steps, save_every):
    def run():
        with pg_llm_lab.connect(db_url) as other:
            other.execute(f"CALL llm_train('{model}', {steps}, batch_size => 4, lr => 1e-2, split => '{model}', "
                          f"save_every => {save_every}, notice_every => 0)")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_the_watcher_follows_the_run_and_samples_at_write_backs(conn, db_url, text_model):
    since = conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
    watcher = TrainingWatcher(text_model, "To be", url=db_url, every=0.05, wait=60, timeout=120, sample_tokens=5)
    train_in_thread(db_url, text_model, 90, save_every=30).join()
    log = watcher.join(timeout=60)
    assert log["id"].tolist() == plots.train_log(conn, text_model, since)["id"].tolist()
    assert len(log) == 90
    assert watcher.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "the run is over" in watcher.status.value
    # each sample: a checkpoint of a write-back (every 30 steps), and what those weights write
    assert watcher.samples and all(step % 30 == 0 for step, _, _ in watcher.samples)
    for step, checkpoint, text in watcher.samples:
        assert conn.execute("SELECT step FROM llm_checkpoint WHERE id = %s", [checkpoint]).fetchone()[0] == step
    last_step, last_checkpoint, last_text = watcher.samples[-1]
    conn.execute("SELECT llm_checkpoint_load(%s, %s)", [text_model, last_checkpoint])
    again = conn.execute("SELECT llm_generate('To be', 5, 0.8, 40, model => %s, seed => 1)", [text_model]).fetchone()[0]
    assert again == last_text


def test_the_watcher_ignores_another_models_run(conn, db_url, text_model):
    other = make_text_model(conn, "test-gen-widgets-other")
    try:
        start = time.monotonic()
        watcher = TrainingWatcher(text_model, "To be", url=db_url, every=0.05, wait=1.0, timeout=60)
        thread = train_in_thread(db_url, other, 200, save_every=50)
        log = watcher.join(timeout=30)
        assert log is None or log.empty
        assert "no run of" in watcher.status.value and watcher.samples == []
        assert time.monotonic() - start < 20
        thread.join()
    finally:
        conn.execute("DELETE FROM llm_model_config WHERE model = %s", [other])
        conn.execute("DELETE FROM llm_tokenizer WHERE model = %s", [other])
        conn.execute("DELETE FROM llm_dataset WHERE split = %s", [other])


def test_the_class_view_draws_every_run_and_who_trains(conn, db_url, text_model):
    conn.execute(f"CALL llm_train('{text_model}', 5, batch_size => 2, split => '{text_model}', notice_every => 0)")
    log = plots.class_log(conn, minutes=5)
    assert text_model in set(log["model"])
    fig = plots.class_curves(log)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert f"{text_model} (step 5)" in labels
    view = ClassView(url=db_url, minutes=5, every=0.05, duration=60)
    try:
        deadline = time.monotonic() + 20
        while view.refreshes < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert view.refreshes >= 2 and view.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        view.stop()
    assert not view._thread.is_alive()
    thread = train_in_thread(db_url, text_model, 300, save_every=1000)
    try:
        deadline = time.monotonic() + 20
        while not any(text_model in q for *_, q in training_now(conn)) and thread.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        thread.join()


def test_held_out_prompt_is_how_most_paragraphs_begin():
    play = "ROMEO:\nHe jests at scars.\n\nJULIET:\nAy me!\n\nROMEO:\nShe speaks.\n\n2 gentlemen enter"
    assert course.held_out_prompt(play) == "ROMEO:"
    docs = "Return the sum.\n\nimplementation of = operator\n\nReturn the size.\n\nI/O error\n\nReturn a copy."
    assert course.held_out_prompt(docs) == "Return the"
    assert course.held_out_prompt("") == "The"


def test_trained_model_is_the_learners_model_once_trained(conn, monkeypatch, text_model):
    monkeypatch.setenv("PG_LLM_LAB_LEARNER", "test_gen_learner")
    name = course.mine(conn, "gpt")
    assert not course.is_trained(conn, name)
    make_text_model(conn, name)
    try:
        conn.execute(f"CALL llm_train('{name}', 2, batch_size => 2, split => '{name}', notice_every => 0)")
        assert course.trained_model(conn) == name
    finally:
        conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
        conn.execute("DELETE FROM llm_tokenizer WHERE model = %s", [name])
        conn.execute("DELETE FROM llm_dataset WHERE split = %s", [name])


def test_course_prompt_reads_the_held_out_text_notebook_08_kept(conn, monkeypatch):
    monkeypatch.setenv("PG_LLM_LAB_LEARNER", "test_gen_learner")
    table = course.mine(conn, "gpt_paragraphs")
    conn.execute(f"CREATE TABLE {table} (id int, part text, paragraph text)")
    try:
        conn.execute(f"INSERT INTO {table} VALUES (0, 'train', 'KING:\nNo.'), (0, 'val', 'ROMEO:\nAy.'), "
                     "(1, 'val', 'JULIET:\nO.'), (2, 'val', 'ROMEO:\nSo.')")
        assert course.course_prompt(conn) == "ROMEO:"
    finally:
        conn.execute(f"DROP TABLE {table}")
