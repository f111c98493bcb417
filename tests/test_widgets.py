"""pg_llm_lab.widgets, driven headless: the tape stepper's controls and panel,
the sampling playground's controls against llm_generate itself."""

import html
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")

from pg_llm_lab.widgets import SamplingPlayground, TapeStepper  # noqa: E402

DOC_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
CORPUS = ["To be, or not to be, that is the question.", "All the world's a stage,",
          "And all the men and women merely players."] * 10


@pytest.fixture
def text_model(conn):
    name = "test-widgets"
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    vocab = conn.execute("SELECT llm_bpe_train(%s, %s::text[], 300)", [name, CORPUS]).fetchone()[0]
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES (%s, 1, 2, 32, 64, %s)", [name, vocab])
    conn.execute("SELECT llm_init(%s, 3)", [name])
    yield name
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    conn.execute("DELETE FROM llm_tokenizer WHERE model = %s", [name])


def generate(conn, model, prompt, temperature, top_k, top_p, seed, max_tokens=12):
    conn.execute("SELECT set_config('pg_llm.default_model', %s, false)", [model])
    return conn.execute("SELECT llm_generate(%s, %s, %s, %s, %s, seed => %s)",
                        [prompt, max_tokens, temperature, top_k, top_p, seed]).fetchone()[0]


def test_sampling_playground_follows_its_controls(conn, text_model):
    playground = SamplingPlayground(conn, "To be", model=text_model, max_tokens=12, temperature=1.5, seed=5)
    assert playground.text == generate(conn, text_model, "To be", 1.5, 0, 1.0, 5)
    assert html.escape(playground.text) in playground.output.value

    playground.temperature.value = 0.0                     # greedy: the seed no longer matters
    greedy = generate(conn, text_model, "To be", 0.0, 0, 1.0, 99)
    assert playground.text == greedy
    playground.temperature.value, playground.top_k.value, playground.top_p.value = 1.2, 20, 0.9
    assert playground.text == generate(conn, text_model, "To be", 1.2, 20, 0.9, 5)

    samples = {playground.text}
    for seed in (6, 7, 8):
        text = playground.regenerate()
        assert playground.seed.value == seed
        assert text == playground.text == generate(conn, text_model, "To be", 1.2, 20, 0.9, seed)
        samples.add(text)
    assert len(samples) > 1                               # new seeds, new samples


def test_tape_stepper_plays_and_shows_each_op(conn):
    conn.execute("SELECT llm_autograd_mode('full')")
    conn.execute("SELECT llm_prune_autograd_state()")
    conn.execute("SELECT llm_cross_entropy(llm_gelu(llm_matmul(llm_tensor_rt_leaf(llm_randn('{2,3}', 1.0, 1), 'x'),"
                 " llm_tensor_rt_leaf(llm_randn('{3,4}', 1.0, 2), 'w'))), '{0,3}')")
    conn.execute("SELECT llm_backprop()")
    try:
        stepper = TapeStepper(conn)
        box = stepper.widget
        assert (stepper.play.min, stepper.play.max) == (1, 3) == (stepper.slider.min, stepper.slider.max)
        assert "llm_matmul" in stepper.panel.value and "&#x27;x&#x27;" in stepper.panel.value
        stepper.slider.value = 2
        assert "op 2/3: llm_gelu" in stepper.panel.value and "grad  [" in stepper.panel.value
        assert box.children[0].children == (stepper.play, stepper.slider)

        # the README's picture of the stepper: the panel of op 2 as a figure
        fig = stepper.figure(2)
        assert stepper.describe(2) in [t.get_text() for t in fig.texts]
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        fig.savefig(DOC_IMAGES / "tape_stepper.png", dpi=100)
        assert (DOC_IMAGES / "tape_stepper.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        conn.execute("SELECT llm_autograd_mode('off')")
