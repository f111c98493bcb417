"""pg_llm_lab.widgets, driven headless: the tape stepper's controls, filters and panel
(on a toy tape and on a whole GPT-2's), the tape drawn as a graph (plots.tape_graph),
the sampling playground's controls against llm_generate itself."""

import html
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from pg_llm_lab.plots import tape_graph  # noqa: E402
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
        assert box.children[0].children == (stepper.op_filter, stepper.layer_filter)
        assert box.children[1].children == (stepper.play, stepper.slider)
        assert stepper.layer_filter.disabled and stepper.layers == ["", "", ""]   # no GPT-2 here: no layers

        # the README's picture of the stepper: the panel of op 2 as a figure
        fig = stepper.figure(2)
        assert stepper.describe(2) in [t.get_text() for t in fig.texts]
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        fig.savefig(DOC_IMAGES / "tape_stepper.png", dpi=100)
        assert (DOC_IMAGES / "tape_stepper.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        conn.execute("SELECT llm_autograd_mode('off')")


@pytest.fixture
def gpt2_tape(conn):
    """This session's tape of a 2-block GPT-2's loss, recorded in mode full and backpropagated."""
    name = "test-widgets-tape"
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES (%s, 2, 2, 16, 16, 50)", [name])
    conn.execute("SELECT llm_init(%s, 5)", [name])
    conn.execute("SELECT llm_autograd_mode('full')")
    conn.execute("SELECT llm_prune_autograd_state()")
    conn.execute("SELECT llm_loss(%s, '{3,1,4,1,5,9}', '{1,4,1,5,9,-100}')", [name])
    conn.execute("SELECT llm_autograd_mode('off')")
    conn.execute("SELECT llm_backprop()")
    yield name
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])


def test_tape_stepper_sorts_a_gpt2_tape_into_layers(conn, gpt2_tape):
    stepper = TapeStepper(conn)
    reads = {row[0]: {stepper.tensors[t][4] for t in row[2]} - {None} for row in stepper.ops}
    layers = dict(zip((row[0] for row in stepper.ops), stepper.layers))
    for op_id, params in reads.items():       # an op reading a block's weights is in that block
        for block in ("h.0", "h.1"):
            if any(p.startswith(block + ".") for p in params):
                assert layers[op_id] == block, (op_id, params)
    assert list(dict.fromkeys(stepper.layers)) == ["embeddings", "h.0", "h.1", "head"]   # in that order
    ops_of = {layer: [stepper.ops[i - 1][1] for i in stepper.op_ids(layer=layer)] for layer in ("h.0", "head")}
    assert ops_of["h.0"].count("llm_layernorm") == 2 and ops_of["h.0"].count("llm_attention_qkv") == 1
    assert ops_of["h.0"][-1] == "llm_add"                          # the block ends with its second residual add
    assert ops_of["head"] == ["llm_layernorm", "llm_matmul", "llm_cross_entropy"]   # ln_f, tied lm_head, loss
    assert stepper.op_ids(op="llm_attention_qkv", layer="h.1") == [i for i in stepper.op_ids(layer="h.1")
                                                                    if stepper.ops[i - 1][1] == "llm_attention_qkv"]


def test_tape_stepper_filters_follow_the_widget(conn, gpt2_tape):
    stepper = TapeStepper(conn)
    stepper.widget
    assert stepper.slider.max == len(stepper.ops) and "34 of 34 ops shown" in stepper.panel.value
    stepper.layer_filter.value = "h.1"
    kept = stepper.op_ids(layer="h.1")
    assert stepper.slider.max == stepper.play.max == len(kept) == 14 and stepper.slider.value == 1
    assert f"op {kept[0]}/34" in stepper.panel.value and "[h.1]" in stepper.panel.value
    stepper.slider.value = 5
    assert f"op {kept[4]}/34" in stepper.panel.value
    stepper.op_filter.value = "llm_gelu"                             # h.1 and GELU: one op
    assert stepper.slider.max == 1 and "llm_gelu  [h.1]" in stepper.panel.value
    assert "value [" in stepper.panel.value and "grad  [" in stepper.panel.value      # values and gradients
    stepper.op_filter.value = "llm_embedding"                        # none in h.1
    assert "no op of the tape passes these filters" in stepper.panel.value


def test_tape_stepper_draws_an_output_and_its_gradient(conn, gpt2_tape):
    stepper = TapeStepper(conn)
    op_id = stepper.op_ids(op="llm_gelu")[0]
    fig = stepper.output_figure(op_id)
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    _, _, data, grad, _, _ = stepper.tensors[stepper.ops[op_id - 1][3]]
    assert len(images) == 2 and np.array_equal(images[0], data) and np.array_equal(images[1], grad)


def test_tape_graph_has_a_box_per_op_and_an_arrow_per_input(conn, gpt2_tape):
    ops = conn.execute("SELECT id, op, inputs, output FROM llm_tape ORDER BY id").fetchall()
    produced = {output for _, _, _, output in ops}
    fig = tape_graph(conn, highlight=7)
    ax = fig.axes[0]
    boxes = [t.get_text() for t in ax.texts if t.get_bbox_patch() is not None]
    assert boxes == [f"{i} {op.removeprefix('llm_')}" for i, op, _, _ in ops]
    edges = sum(len({t for t in inputs if t in produced}) for _, _, inputs, _ in ops)
    arrows = [c for c in ax.get_children() if type(c).__name__ == "Annotation" and c.arrow_patch is not None]
    assert len(arrows) == edges
    leaf_labels = " ".join(t.get_text() for t in ax.texts if t.get_text().startswith("← "))
    assert "h.1.mlp.c_fc.weight" in leaf_labels and "wte.weight" in leaf_labels
    chosen = next(t for t in ax.texts if t.get_text() == f"7 {ops[6][1].removeprefix('llm_')}")
    assert chosen.get_color() == "white"
    fig.savefig(DOC_IMAGES / "tape_graph.png", dpi=80, bbox_inches="tight")   # the README's picture of it
