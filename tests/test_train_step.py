"""A training step in the database: llm_gradients (the fused forward and
backward over a batch) against PyTorch autograd on the same HF model and
batch, bit-identical at any thread count; llm_train_step (forward, backward,
clip, AdamW, write-back, log) against the PyTorch loop of
tests/train_reference.py, and what bad input leaves behind (nothing)."""
import numpy as np
import psycopg
import pytest

torch = pytest.importorskip("torch", reason="the gradients are compared with PyTorch autograd")
F = torch.nn.functional
pytest.importorskip("transformers", reason="the reference model is HF's GPT-2")

from train_reference import (ONE, TINY, AdamWSettings, ReferenceTrainer, batch_loss,  # noqa: E402
                             load_into_pg, make_reference_model, named_parameters, nanogpt_lr)

# gpt2-small's shapes, but a short context and a smaller vocabulary keep CI fast
# (the head size 64, n_inner 3072, 12 layers and 12 heads are what matter).
SMALL = dict(n_layer=12, n_head=12, n_embd=768, n_positions=64, vocab_size=2053)
# head size 5, n_inner 23: no SIMD width divides them
ODD = dict(n_layer=3, n_head=3, n_embd=15, n_positions=24, vocab_size=97, n_inner=23)
# GPT-2's vocabulary: the logits of 3 x 57 rows are two chunks of 86 and 85 rows for the
# fused lm_head + cross-entropy (at most 32 MB of logits at once)
WIDE = dict(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)


@pytest.fixture(autouse=True)
def drop_step_models(db_url):
    yield
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(r"DELETE FROM llm_model_config WHERE model LIKE 'ts\_%'")


def batch(vocab, B, T, seed, ignored=2):
    """tokens [B, T] and next-token targets, the last and `ignored` random positions -100."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (B, T))
    targets = np.roll(tokens, -1, axis=1)
    targets[:, -1] = -100
    flat = targets.reshape(-1)
    flat[rng.choice(flat.size, ignored, replace=False)] = -100
    return tokens, targets


def gradients(conn, model, tokens, targets):
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT name, grad FROM llm_gradients(%s, %s, %s)",
                    [model, tokens.tolist(), targets.tolist()])
        return dict(cur.fetchall())


def torch_gradients(model, tokens, targets):
    model.zero_grad(set_to_none=True)
    loss = batch_loss(model, tokens, targets)
    loss.backward()
    return loss.item(), {n: p.grad.numpy().copy() for n, p in named_parameters(model).items()}


def assert_grads_close(got, want, rel=1e-4):
    assert set(got) == set(want)
    worst = {}
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, name
        scale = np.abs(w).max()
        assert scale > 0, f"{name}: the reference gradient is zero, the test would prove nothing"
        worst[name] = np.abs(g.astype(np.float64) - w).max() / scale
    bad = {n: e for n, e in worst.items() if not e <= rel}
    assert not bad, f"gradients off by more than {rel} of their scale: {bad}"
    return max(worst.values())


@pytest.mark.parametrize("config,B,T,seed", [(ONE, 1, 5, 0), (TINY, 3, 17, 1), (ODD, 2, 24, 2)],
                         ids=["one", "tiny", "odd"])
def test_gradients_match_autograd(conn, config, B, T, seed):
    model = make_reference_model(config, seed=seed)
    load_into_pg(conn, model, "ts_grad")
    tokens, targets = batch(config["vocab_size"], B, T, seed, ignored=min(2, B * T - 2))
    loss, want = torch_gradients(model, tokens, targets)
    got = gradients(conn, "ts_grad", tokens, targets)
    assert_grads_close(got, want)
    # the loss of the same forward
    assert conn.execute("SELECT llm_loss('ts_grad', %s, %s)",
                        [tokens[0].tolist(), targets[0].tolist()]).fetchone()[0] is not None
    assert loss > 0


def test_gradients_of_gpt2_small_shapes_match_autograd(conn):
    model = make_reference_model(SMALL, seed=3)
    load_into_pg(conn, model, "ts_small")
    tokens, targets = batch(SMALL["vocab_size"], 2, 9, 3)
    _, want = torch_gradients(model, tokens, targets)
    assert_grads_close(gradients(conn, "ts_small", tokens, targets), want)


def test_one_sequence_may_be_a_flat_array(conn):
    model = make_reference_model(TINY, seed=4)
    load_into_pg(conn, model, "ts_flat")
    tokens, targets = batch(TINY["vocab_size"], 1, 11, 4)
    flat = gradients(conn, "ts_flat", tokens[0], targets[0])
    nested = gradients(conn, "ts_flat", tokens, targets)
    assert all(np.array_equal(flat[n], nested[n]) for n in flat)


def test_gradients_are_bit_identical_at_any_thread_count(conn):
    model = make_reference_model(ODD, seed=5)
    load_into_pg(conn, model, "ts_threads")
    tokens, targets = batch(ODD["vocab_size"], 3, 20, 5)
    runs = []
    for threads in (1, 2):
        conn.execute("SELECT set_config('pg_llm.threads', %s, false)", (str(threads),))
        runs.append(gradients(conn, "ts_threads", tokens, targets))
    conn.execute("RESET pg_llm.threads")
    assert all(runs[0][n].tobytes() == runs[1][n].tobytes() for n in runs[0])


def test_a_step_over_several_chunks_of_the_lm_head_matches_autograd(conn):
    """The loss and every gradient of llm_train_step (its log's loss, llm_param.grad)
    when the lm_head's logits are made in several chunks of rows."""
    model = make_reference_model(WIDE, seed=6)
    load_into_pg(conn, model, "ts_wide")
    tokens, targets = batch(WIDE["vocab_size"], 3, 57, 6)
    loss, want = torch_gradients(model, tokens, targets)
    got = train_step(conn, "ts_wide", tokens, targets, 1e-3, AdamWSettings(max_grad_norm=None))
    assert abs(got - loss) < 1e-5 * loss
    assert_grads_close(params(conn, "ts_wide", "grad"), want)


# ---- llm_train_step ------------------------------------------------------------------

def params(conn, model, col="data"):
    with conn.cursor(binary=True) as cur:
        cur.execute(f"SELECT name, {col} FROM llm_param WHERE model = %s", [model])
        return dict(cur.fetchall())


def train_step(conn, model, tokens, targets, lr, s: AdamWSettings):
    return conn.execute(
        "SELECT llm_train_step(model => %s, tokens => %s, targets => %s, lr => %s, "
        "weight_decay => %s, beta1 => %s, beta2 => %s, eps => %s, clip => %s)",
        [model, np.asarray(tokens).tolist(), np.asarray(targets).tolist(), lr, s.weight_decay,
         s.betas[0], s.betas[1], s.eps, s.max_grad_norm]).fetchone()[0]


def test_twenty_steps_match_the_pytorch_loop(conn):
    config = TINY
    model = make_reference_model(config, seed=6)
    load_into_pg(conn, model, "ts_train")
    s = AdamWSettings(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), max_grad_norm=1.0,
                      warmup_steps=5, decay_steps=20)
    trainer = ReferenceTrainer(model, s)
    loss_errors = []
    for step in range(20):
        tokens, targets = batch(config["vocab_size"], 2, 16, 100 + step)
        lr = nanogpt_lr(step, s)
        got = train_step(conn, "ts_train", tokens, targets, lr, s)
        want = trainer.step(tokens, targets)
        assert want.lr == pytest.approx(lr, rel=1e-15)
        loss_errors.append(abs(got - want.loss) / want.loss)
    assert max(loss_errors) <= 1e-4, loss_errors

    data = params(conn, "ts_train")
    C = config["n_embd"]
    errors = {}
    for name, p in trainer.params.items():
        want, got = p.detach().numpy(), data[name]
        if name.endswith("attn.c_attn.bias"):
            # The key bias's gradient is zero in exact arithmetic (it adds q.b to
            # every score of a query, which softmax ignores): both sides hold
            # rounding noise there, which AdamW scales up to lr-sized steps.
            want, got = np.delete(want, np.s_[C:2 * C]), np.delete(got, np.s_[C:2 * C])
        errors[name] = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
    assert max(errors.values()) <= 1e-4, {n: e for n, e in errors.items() if e > 1e-4}
    log = conn.execute("SELECT step, loss, lr, clip, tokens IS NOT NULL, targets IS NOT NULL "
                       "FROM llm_train_log WHERE model = 'ts_train' ORDER BY id").fetchall()
    assert [r[0] for r in log] == list(range(1, 21))
    assert all(r[3] == 1.0 and r[4] and r[5] for r in log)
    assert conn.execute("SELECT DISTINCT step FROM llm_param WHERE model = 'ts_train'").fetchall() == [(20,)]


def test_a_logged_step_replays_with_one_call(conn):
    """A learner rebuilds a step from its llm_train_log row: same loss, same weights, bit for bit."""
    model = make_reference_model(TINY, seed=7)
    load_into_pg(conn, model, "ts_replay")
    s = AdamWSettings(lr=1e-3, max_grad_norm=0.5)
    train_step(conn, "ts_replay", *batch(TINY["vocab_size"], 2, 8, 70), 2e-3, s)
    saved = conn.execute("SELECT llm_checkpoint_save('ts_replay')").fetchone()[0]
    loss = train_step(conn, "ts_replay", *batch(TINY["vocab_size"], 2, 8, 71), 1e-3, s)
    after = params(conn, "ts_replay")
    row = conn.execute("SELECT loss, tokens, targets, lr, weight_decay, beta1, beta2, eps, clip "
                       "FROM llm_train_log WHERE model = 'ts_replay' ORDER BY id DESC LIMIT 1").fetchone()
    conn.execute("SELECT llm_checkpoint_load('ts_replay', %s)", [saved])
    replayed = conn.execute("SELECT llm_train_step('ts_replay', %s, %s, %s, %s, %s, %s, %s, %s)",
                            row[1:]).fetchone()[0]
    assert replayed == loss == row[0]
    again = params(conn, "ts_replay")
    assert all(again[n].tobytes() == after[n].tobytes() for n in after)
    conn.execute("DELETE FROM llm_checkpoint WHERE id = %s", [saved])


def test_bad_input_is_an_error_and_writes_nothing(conn):
    model = make_reference_model(TINY, seed=8)
    load_into_pg(conn, model, "ts_bad")
    fp = lambda: conn.execute(  # noqa: E731
        "SELECT array_agg(row(name, md5(llm_bytea(data)), step)::text ORDER BY name), "
        "(SELECT count(*) FROM llm_train_log WHERE model = 'ts_bad') "
        "FROM llm_param WHERE model = 'ts_bad'").fetchone()
    start = fp()
    V, P = TINY["vocab_size"], TINY["n_positions"]
    ok_t, ok_y = [[1, 2, 3], [4, 5, 6]], [[2, 3, -100], [5, 6, 7]]
    cases = [
        (dict(tokens=[[1, 2, 3], [4, 5]], targets=ok_y), "(?i)multidimensional arrays"),  # ragged: PostgreSQL refuses it
        (dict(tokens=ok_t, targets=[[2, 3], [5, 6]]), "do not match"),
        (dict(tokens=ok_t, targets=[2, 3, 4]), "do not match"),
        (dict(tokens=[[1, 2, V]], targets=[[1, 2, 3]]), f"token {V} at position 3"),
        (dict(tokens=[[1, 2, -1]], targets=[[1, 2, 3]]), "token -1"),
        (dict(tokens=ok_t, targets=[[2, 3, -5], [5, 6, 7]]), "target -5"),
        (dict(tokens=ok_t, targets=[[-100] * 3 for _ in range(2)]), "every target"),
        (dict(tokens=[list(range(P + 1))], targets=[list(range(P + 1))]), "n_positions"),
        (dict(tokens=ok_t, targets=ok_y, lr=-1e-3), "lr must be"),
        (dict(tokens=ok_t, targets=ok_y, model="ts_nope"), 'unknown model "ts_nope"'),
        (dict(tokens=[[1, None, 3]], targets=[[1, 2, 3]]), "NULL"),
        (dict(tokens=ok_t, targets=ok_y, clip=0.0), "clip must be"),
    ]
    for kw, message in cases:
        args = dict(model="ts_bad", lr=1e-3) | kw
        with pytest.raises(psycopg.Error, match=message):
            conn.execute("SELECT llm_train_step(model => %(model)s, tokens => %(tokens)s, "
                         "targets => %(targets)s, lr => %(lr)s, clip => %(clip)s)",
                         args | {"clip": kw.get("clip")})
        assert fp() == start, kw
    conn.execute("DELETE FROM llm_param WHERE model = 'ts_bad' AND name = 'ln_f.bias'")
    with pytest.raises(psycopg.errors.DataException, match='missing parameter "ln_f.bias"'):
        conn.execute("SELECT llm_train_step('ts_bad', %s, %s, 1e-3)", [ok_t, ok_y])


# ---- the tape of a training step -----------------------------------------------------

def tape_rows(conn):
    return conn.execute("SELECT count(*), count(*) FILTER (WHERE op = 'llm_cross_entropy') FROM llm_tape"
                        ).fetchone()


def test_a_recorded_step_leaves_its_batch_on_the_tape_with_torchs_gradients(conn):
    """pg_llm.autograd_mode full: llm_train_step records the forward of its batch
    (one graph a sequence, the weights shared leaves, the batch loss on top);
    llm_backprop over it gives PyTorch's gradients at the weights before the
    update, and recording changes nothing the step computes."""
    model = make_reference_model(TINY, seed=7)
    load_into_pg(conn, model, "ts_tape")
    load_into_pg(conn, model, "ts_notape")
    tokens, targets = batch(TINY["vocab_size"], 3, 17, 7)
    want_loss, want = torch_gradients(model, tokens, targets)
    s = AdamWSettings(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), max_grad_norm=1.0)

    conn.execute("SELECT llm_autograd_mode('full')")
    try:
        loss = train_step(conn, "ts_tape", tokens, targets, 1e-3, s)
    finally:
        conn.execute("SELECT llm_autograd_mode('off')")
    n_ops, n_losses = tape_rows(conn)
    assert n_losses == 3
    # the last op is the batch loss: the counted-weighted mean of the sequences' losses
    root_op, root_value = conn.execute("""
        SELECT t.op, r.data FROM llm_tape t JOIN llm_tensor_rt r ON r.id = t.output
        ORDER BY t.id DESC LIMIT 1""").fetchone()
    assert root_op == "llm_add"
    assert abs(float(root_value[0]) - want_loss) <= 1e-5 * want_loss
    assert abs(loss - want_loss) <= 1e-5 * want_loss

    # one leaf a parameter, shared by the three sequences
    leaves = dict(conn.execute("SELECT param_name, count(*) FROM llm_tensor_rt "
                               "WHERE param_name IS NOT NULL GROUP BY 1").fetchall())
    assert set(leaves) == set(want) and set(leaves.values()) == {1}
    conn.execute("SELECT llm_backprop()")
    got = dict(conn.execute("SELECT param_name, grad FROM llm_tensor_rt WHERE param_name IS NOT NULL"))
    assert_grads_close(got, want)

    # the step itself is the same with the tape off
    train_step(conn, "ts_notape", tokens, targets, 1e-3, s)
    a, b = params(conn, "ts_tape"), params(conn, "ts_notape")
    assert all(a[n].tobytes() == b[n].tobytes() for n in a)


def torch_op(op, attrs, inputs):
    """What the SQL op `op` computes from its recorded input values, in float64 torch."""
    x = [torch.as_tensor(np.asarray(v, dtype=np.float64)) for v in inputs]
    if op == "llm_add":
        return x[0] + x[1]
    if op == "llm_scale":
        return x[0] * attrs["s"]
    if op == "llm_matmul":
        a, b = x
        return (a.T if attrs["transpose_a"] else a) @ (b.T if attrs["transpose_b"] else b)
    if op == "llm_layernorm":
        return F.layer_norm(x[0], x[0].shape[-1:], x[1], x[2], attrs["eps"])
    if op == "llm_gelu":
        return F.gelu(x[0], approximate="tanh")
    if op == "llm_embedding":
        return x[0][attrs["ids"]]
    if op == "llm_slice":
        return x[0][attrs["start"]:attrs["stop"]]
    if op == "llm_attention_qkv":
        T, C3 = x[0].shape
        H, C = attrs["n_head"], C3 // 3
        q, k, v = (t.reshape(T, H, C // H).transpose(0, 1) for t in x[0].split(C, dim=1))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(T, C)
    if op == "llm_cross_entropy":
        return F.cross_entropy(x[0], torch.as_tensor(attrs["targets"]), ignore_index=-100).reshape(1)
    raise AssertionError(f"no reference for {op}")


def test_a_recorded_steps_values_are_its_ops_of_their_inputs(conn):
    """The tape of a step is built after the forward from what it saved: in mode
    full, every op's output is what PyTorch computes from its recorded inputs
    (sliced from the batch's rows correctly); a sequence with no counted target
    is left out of the batch loss, and backprop still gives torch's gradients."""
    model = make_reference_model(ODD, seed=9)
    load_into_pg(conn, model, "ts_values")
    tokens, targets = batch(ODD["vocab_size"], 3, 11, 9)
    targets[1, :] = -100
    want_loss, want = torch_gradients(model, tokens, targets)

    conn.execute("SELECT llm_autograd_mode('full'), llm_prune_autograd_state()")
    try:
        loss = train_step(conn, "ts_values", tokens, targets, 1e-3, AdamWSettings(lr=1e-3))
    finally:
        conn.execute("SELECT llm_autograd_mode('off')")
    assert tape_rows(conn)[1] == 2
    assert abs(loss - want_loss) <= 1e-5 * want_loss
    values = dict(conn.execute("SELECT id, data FROM llm_tensor_rt").fetchall())
    ops = conn.execute("SELECT op, inputs, output, attrs FROM llm_tape ORDER BY id").fetchall()
    for op, inputs, output, attrs in ops:
        got = values[output].astype(np.float64)
        expected = torch_op(op, attrs, [values[i] for i in inputs]).numpy()
        assert got.shape == expected.shape, op
        scale = max(1.0, np.abs(expected).max())
        assert np.abs(got - expected).max() <= 1e-5 * scale, f"{op} -> {output}"
    conn.execute("SELECT llm_backprop()")
    got = dict(conn.execute("SELECT param_name, grad FROM llm_tensor_rt WHERE param_name IS NOT NULL"))
    assert_grads_close(got, want)
    conn.execute("SELECT llm_prune_autograd_state()")


def test_meta_mode_records_a_steps_shapes_and_off_records_nothing(conn):
    model = make_reference_model(ONE, seed=8)
    load_into_pg(conn, model, "ts_meta")
    tokens, targets = batch(ONE["vocab_size"], 2, 6, 8, ignored=0)
    s = AdamWSettings(lr=1e-3)
    conn.execute("SELECT llm_prune_autograd_state()")
    train_step(conn, "ts_meta", tokens, targets, 1e-3, s)
    assert tape_rows(conn) == (0, 0)
    conn.execute("SELECT llm_autograd_mode('meta')")
    try:
        train_step(conn, "ts_meta", tokens, targets, 1e-3, s)
    finally:
        conn.execute("SELECT llm_autograd_mode('off')")
    n_ops, n_losses = tape_rows(conn)
    # per sequence: 3 embedding ops, 14 a layer, ln_f, lm_head, cross-entropy; then the mean
    assert (n_ops, n_losses) == (2 * (3 + 14 * ONE["n_layer"] + 3) + 3, 2)
    assert conn.execute("SELECT count(*) FROM llm_tensor_rt WHERE data IS NOT NULL").fetchone()[0] == 0
    conn.execute("SELECT llm_prune_autograd_state()")
