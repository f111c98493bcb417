"""The autograd tape: recording (llm_tape, llm_tensor_rt), llm_backprop
against torch.autograd for every op at odd sizes, a GPT-2 forward's tape
against HF's gradients, the modes, other sessions, and bad input.

Every backprop here is checked against the gradients torch computes for the
same graph from the same values: nothing compares pg_llm with itself.
"""
import time

import numpy as np
import psycopg
import pytest

import pg_llm_lab

torch = pytest.importorskip("torch", reason="the parity tests compare with PyTorch")
F = torch.nn.functional

rng = np.random.default_rng(8)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def record(conn, mode="full"):
    conn.execute("SELECT llm_autograd_mode(%s)", (mode,))
    conn.execute("SELECT llm_prune_autograd_state()")


def last_op(conn):
    return conn.execute("SELECT id, op, inputs, output, shape FROM llm_tape ORDER BY id DESC LIMIT 1").fetchone()


def grad_of(conn, tensor_id):
    return q(conn, "SELECT grad FROM llm_tensor_rt WHERE id = %s", tensor_id)


def torch_grads(fn, inputs, seed):
    """d(sum(fn(inputs) * seed))/d(inputs), in float32 torch."""
    leaves = [torch.tensor(x, requires_grad=True) for x in inputs]
    y = fn(*leaves)
    (y * torch.as_tensor(seed)).sum().backward()
    return [leaf.grad.numpy() for leaf in leaves]


def assert_grad_close(got, want, tol):
    assert got is not None and got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= tol * scale, f"max abs error {err} (max |grad| {scale})"
    return err


def check_op(conn, sql, inputs, fn, tol=2e-5, seeded=True):
    """Run `sql` over `inputs` recording, backprop a random seed (or 1 for a
    scalar) and compare each input's gradient with torch's."""
    record(conn)
    conn.execute(sql, inputs)
    op_id, op, input_ids, output, shape = last_op(conn)
    assert len(input_ids) == len(inputs)
    seed = randn(*shape) if seeded else np.ones(shape, np.float32)
    reached = q(conn, "SELECT llm_backprop(NULL, %s)", seed) if seeded else q(conn, "SELECT llm_backprop()")
    assert reached == len(set(input_ids)) + 1
    np.testing.assert_array_equal(grad_of(conn, output), seed)
    want = torch_grads(fn, inputs, seed.reshape(shape) if seeded else 1.0)
    return max(assert_grad_close(grad_of(conn, i), w, tol) for i, w in zip(input_ids, want))


# ---- every op against torch.autograd --------------------------------------------

@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 17, 33), (33, 769, 7)])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul(conn, m, k, n, ta, tb):
    a = randn(k, m) if ta else randn(m, k)
    b = randn(n, k) if tb else randn(k, n)

    def fn(a, b):
        return (a.T if ta else a) @ (b.T if tb else b)
    check_op(conn, f"SELECT llm_matmul(%s, %s, {ta}, {tb})", [a, b], fn, tol=1e-4)


@pytest.mark.parametrize("shape,bshape", [((7,), (7,)), ((17, 33), (17, 33)), ((17, 33), (33,)),
                                          ((3, 5, 7), (5, 7)), ((1, 769), (769,))])
@pytest.mark.parametrize("op", ["llm_add", "llm_mul"])
def test_add_mul(conn, op, shape, bshape):
    a, b = randn(*shape), randn(*bshape)
    fn = (lambda a, b: a + b) if op == "llm_add" else (lambda a, b: a * b)
    check_op(conn, f"SELECT {op}(%s, %s)", [a, b], fn)


@pytest.mark.parametrize("shape", [(1,), (17, 33), (3, 769)])
def test_scale(conn, shape):
    check_op(conn, "SELECT llm_scale(%s, -0.37)", [randn(*shape)], lambda x: x * np.float32(-0.37))


@pytest.mark.parametrize("shape", [(1, 1), (17, 33), (769, 3)])
def test_transpose(conn, shape):
    check_op(conn, "SELECT llm_transpose(%s)", [randn(*shape)], lambda x: x.T)


def test_reshape(conn):
    check_op(conn, "SELECT llm_reshape(%s, '{5,-1,3}')", [randn(7, 15)], lambda x: x.reshape(5, 7, 3))


@pytest.mark.parametrize("start,stop", [(0, 1), (3, 11), (16, 17)])
def test_slice(conn, start, stop):
    check_op(conn, f"SELECT llm_slice(%s, {start}, {stop})", [randn(17, 5, 3)], lambda x: x[start:stop])


@pytest.mark.parametrize("shape", [(1,), (33, 17), (3, 769)])
def test_gelu(conn, shape):
    check_op(conn, "SELECT llm_gelu(%s)", [randn(*shape, scale=2.0)],
             lambda x: F.gelu(x, approximate="tanh"))


@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (2, 3, 769)])
def test_softmax(conn, shape):
    check_op(conn, "SELECT llm_softmax(%s)", [randn(*shape, scale=3.0)], lambda x: F.softmax(x, -1))


@pytest.mark.parametrize("tq,tk", [(1, 1), (7, 7), (5, 17)])
def test_softmax_causal(conn, tq, tk):
    mask = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
    check_op(conn, "SELECT llm_softmax(%s, true)", [randn(3, tq, tk, scale=3.0)],
             lambda x: F.softmax(x.masked_fill(~mask, float("-inf")), -1))


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 33), (3, 769)])
def test_layernorm(conn, rows, cols):
    x, g, b = randn(rows, cols, scale=2.0) + 0.5, randn(cols) + 1, randn(cols)
    check_op(conn, "SELECT llm_layernorm(%s, %s, %s)", [x, g, b],
             lambda x, g, b: F.layer_norm(x, (cols,), g, b, 1e-5), tol=1e-4)


def test_embedding_repeated_ids(conn):
    ids = [3, 0, 3, 16, 3, 5, 0]
    check_op(conn, f"SELECT llm_embedding(%s, '{{{','.join(map(str, ids))}}}')", [randn(17, 33)],
             lambda w: w[torch.tensor(ids)])


@pytest.mark.parametrize("rows,vocab", [(1, 1), (7, 33), (5, 769)])
def test_cross_entropy(conn, rows, vocab):
    targets = rng.integers(0, vocab, rows).tolist()
    if rows > 2:
        targets[1] = -100
    check_op(conn, f"SELECT llm_cross_entropy(%s, '{{{','.join(map(str, targets))}}}')",
             [randn(rows, vocab, scale=3.0)],
             lambda x: F.cross_entropy(x, torch.tensor(targets), ignore_index=-100), seeded=False)


def torch_attention(q, k, v, n_head, causal):
    tq, c = q.shape
    tk = k.shape[0]
    hd = c // n_head
    qh, kh, vh = (t.reshape(-1, n_head, hd).transpose(0, 1) for t in (q, k, v))
    s = qh @ kh.transpose(1, 2) / hd ** 0.5
    if causal:
        s = s.masked_fill(~torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq), float("-inf"))
    return (F.softmax(s, -1) @ vh).transpose(0, 1).reshape(tq, c)


@pytest.mark.parametrize("tq,tk,c,n_head,causal", [(1, 1, 3, 1, True), (7, 7, 34, 2, True),
                                                  (5, 17, 51, 3, True), (9, 4, 20, 4, False)])
def test_attention(conn, tq, tk, c, n_head, causal):
    q_, k, v = randn(tq, c), randn(tk, c), randn(tk, c)
    check_op(conn, f"SELECT llm_attention(%s, %s, %s, {n_head}, {causal})", [q_, k, v],
             lambda q, k, v: torch_attention(q, k, v, n_head, causal), tol=1e-4)


# ---- graphs ----------------------------------------------------------------------

def test_hand_built_graph_with_a_shared_node(conn):
    """loss = CE(gelu(x @ w) + gelu(x @ w) * b, t): x @ w feeds two ops, b
    broadcasts, x and w are named leaves; built over two statements."""
    x, w, b = randn(5, 7), randn(7, 9), randn(9)
    targets = [1, 8, 0, 4, -100]
    record(conn)
    h = q(conn, "SELECT llm_gelu(llm_matmul(llm_tensor_rt_leaf(%s, 'x'), llm_tensor_rt_leaf(%s, 'w')))", x, w)
    loss = q(conn, "SELECT llm_cross_entropy(llm_add(%s, llm_mul(%s, %s)), %s)", h, h, b, targets)
    assert q(conn, "SELECT count(*) FROM llm_tape") == 5
    q(conn, "SELECT llm_backprop()")
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ht = F.gelu(xt @ wt, approximate="tanh")
    want = F.cross_entropy(ht + ht * bt, torch.tensor(targets), ignore_index=-100)
    want.backward()
    assert abs(loss - want.item()) < 1e-5
    for name, leaf in (("x", xt), ("w", wt)):
        got = q(conn, "SELECT grad FROM llm_tensor_rt WHERE param_name = %s", name)
        assert_grad_close(got, leaf.grad.numpy(), 2e-5)
    # b entered as a value seen for the first time: an anonymous leaf
    got_b = q(conn, """SELECT r.grad FROM llm_tape t JOIN llm_tensor_rt r ON r.id = t.inputs[2]
                       WHERE t.op = 'llm_mul'""")
    assert_grad_close(got_b, bt.grad.numpy(), 2e-5)


def test_root_and_unreached_tensors(conn):
    """Backprop from an earlier tensor: later ops get no gradient."""
    record(conn)
    x = randn(4, 6)
    q(conn, "SELECT llm_scale(llm_gelu(%s), 2.0)", x)
    gelu_out = q(conn, "SELECT output FROM llm_tape WHERE op = 'llm_gelu'")
    seed = randn(4, 6)
    assert q(conn, "SELECT llm_backprop(%s, %s)", gelu_out, seed) == 2
    assert q(conn, "SELECT count(*) FROM llm_tensor_rt WHERE grad IS NULL") == 1
    (want,) = torch_grads(lambda x: F.gelu(x, approximate="tanh"), [x], seed)
    x_id = q(conn, "SELECT inputs[1] FROM llm_tape WHERE op = 'llm_gelu'")
    assert_grad_close(grad_of(conn, x_id), want, 2e-5)


# ---- modes, sessions, transactions --------------------------------------------------

def test_mode_view_and_setter(conn):
    assert q(conn, "SELECT mode FROM llm_autograd_mode") == "off"
    assert q(conn, "SELECT llm_autograd_mode('meta')") == "meta"
    assert q(conn, "SELECT mode FROM llm_autograd_mode") == "meta"
    assert q(conn, "SHOW max_parallel_workers_per_gather") == "0"
    q(conn, "SELECT llm_autograd_mode('off')")
    assert q(conn, "SHOW pg_llm.autograd_mode") == "off"


def test_off_records_nothing(conn):
    record(conn, "off")
    q(conn, "SELECT llm_gelu(llm_matmul(%s, %s))", randn(3, 4), randn(4, 2))
    assert q(conn, "SELECT count(*) FROM llm_tape") == 0
    assert q(conn, "SELECT count(*) FROM llm_tensor_rt") == 0


def test_meta_records_shapes_not_values(conn):
    record(conn, "meta")
    q(conn, "SELECT llm_softmax(llm_matmul(%s, %s), true)", randn(3, 4), randn(4, 5))
    rows = conn.execute("SELECT op, inputs, output, shape, attrs FROM llm_tape ORDER BY id").fetchall()
    assert rows == [("llm_matmul", [1, 2], 3, [3, 5], {"transpose_a": False, "transpose_b": False}),
                    ("llm_softmax", [3], 4, [3, 5], {"causal": True})]
    assert q(conn, "SELECT count(*) FROM llm_tensor_rt WHERE data IS NULL") == 4
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="recorded in mode meta"):
        q(conn, "SELECT llm_backprop(NULL, %s)", randn(3, 5))


def test_another_session_sees_the_tape_through_its_pid(conn, db_url):
    record(conn)
    x = randn(2, 3)
    q(conn, "SELECT llm_gelu(%s)", x)
    pid = q(conn, "SELECT pg_backend_pid()")
    with pg_llm_lab.connect(db_url) as other:
        assert other.execute("SELECT op FROM llm_tape_all WHERE session = %s", [pid]).fetchall() == [("llm_gelu",)]
        np.testing.assert_array_equal(
            q(other, "SELECT data FROM llm_tensor_rt_all WHERE session = %s AND id = 1", pid), x)
        assert q(other, "SELECT count(*) FROM llm_tape") == 0          # its own tape: none yet


def test_two_sessions_keep_their_own_tapes(conn, db_url):
    """A class on one server: a neighbour's recording never replaces this session's tape."""
    record(conn)
    x = randn(2, 3)
    q(conn, "SELECT llm_gelu(%s)", x)
    with pg_llm_lab.connect(db_url) as other:
        record(other)
        q(other, "SELECT llm_scale(%s, 2)", randn(4, 4))
        assert [r[0] for r in other.execute("SELECT op FROM llm_tape")] == ["llm_scale"]
        assert [r[0] for r in conn.execute("SELECT op FROM llm_tape")] == ["llm_gelu"]
        np.testing.assert_array_equal(q(conn, "SELECT data FROM llm_tensor_rt WHERE id = 1"), x)
        q(conn, "SELECT llm_backprop(NULL, %s)", np.ones((2, 3), np.float32))
        assert q(other, "SELECT count(*) FROM llm_tensor_rt WHERE grad IS NOT NULL") == 0
        gone = q(other, "SELECT pg_backend_pid()")
    # the closed session's rows go at the next fresh tape's first store, whoever stores it
    for _ in range(500):                  # (its backend leaves pg_stat_activity a moment after the close)
        if not q(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", gone):
            break
        time.sleep(0.01)
    record(conn)
    q(conn, "SELECT llm_gelu(%s)", x)
    assert q(conn, "SELECT count(*) FROM llm_tape_all WHERE session = %s", gone) == 0


def test_rollback_then_the_tape_is_written_again(conn):
    record(conn)
    with pytest.raises(psycopg.errors.DivisionByZero):
        with conn.transaction():
            q(conn, "SELECT llm_gelu(%s)", randn(2, 3))
            assert q(conn, "SELECT count(*) FROM llm_tape") == 1
            q(conn, "SELECT 1 / 0")
    assert q(conn, "SELECT count(*) FROM llm_tape") == 0
    q(conn, "SELECT llm_scale(%s, 2)", randn(2, 2))
    assert [r[0] for r in conn.execute("SELECT op FROM llm_tape ORDER BY id")] == ["llm_gelu", "llm_scale"]


def test_prune_empties_the_tables(conn):
    record(conn)
    q(conn, "SELECT llm_gelu(%s)", randn(2, 3))
    q(conn, "SELECT llm_prune_autograd_state()")
    assert q(conn, "SELECT count(*) FROM llm_tape") == 0
    assert q(conn, "SELECT count(*) FROM llm_tensor_rt") == 0


# ---- bad input ---------------------------------------------------------------------

def test_bad_input(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='unknown mode "on"'):
        q(conn, "SELECT llm_autograd_mode('on')")
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        q(conn, "SELECT llm_autograd_mode(NULL)")
    record(conn)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="the tape is empty"):
        q(conn, "SELECT llm_backprop()")
    q(conn, "SELECT llm_gelu(%s)", randn(2, 3))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"shape \[2,3\], not a scalar"):
        q(conn, "SELECT llm_backprop()")
    with pytest.raises(psycopg.errors.DataException, match=r"the seed has shape \[3,2\]"):
        q(conn, "SELECT llm_backprop(NULL, %s)", randn(3, 2))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="root 9 is not a tensor"):
        q(conn, "SELECT llm_backprop(9)")


# ---- GPT-2: llm_loss's forward on the tape, against HF autograd ----------------------

transformers = pytest.importorskip("transformers", reason="the GPT-2 tape is compared with HF")
from hf_checkpoints import make_hf_model  # noqa: E402

GPT2_CONFIGS = {
    "ag_odd": dict(n_layer=2, n_head=2, n_embd=34, vocab_size=517, n_positions=40, n_inner=50,
                   layer_norm_epsilon=1e-3),
    "ag_tiny": dict(n_layer=3, n_head=3, n_embd=96, vocab_size=1000, n_positions=64),
}


@pytest.fixture(scope="module")
def gpt2_models(db_url):
    out = {}
    with pg_llm_lab.connect(db_url) as conn:
        for i, (name, config) in enumerate(GPT2_CONFIGS.items()):
            out[name] = make_hf_model(seed=10 + i, **config)
            conn.execute("DELETE FROM llm_model_config WHERE model = %s", (name,))
            pg_llm_lab.import_hf(conn, out[name], name, progress=False)
    return out


def layer_ops():
    return ["llm_layernorm", "llm_matmul", "llm_add", "llm_attention_qkv", "llm_matmul", "llm_add",
            "llm_add", "llm_layernorm", "llm_matmul", "llm_add", "llm_gelu", "llm_matmul", "llm_add",
            "llm_add"]


@pytest.mark.parametrize("name", list(GPT2_CONFIGS))
def test_gpt2_loss_tape_matches_hf_gradients(conn, gpt2_models, name):
    model = gpt2_models[name]
    cfg = model.config
    tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, 23).tolist()
    targets = tokens[1:] + [-100]
    targets[4] = -100
    record(conn)
    loss = q(conn, "SELECT llm_loss(%s, %s, %s)", name, tokens, targets)

    ops = [r[0] for r in conn.execute("SELECT op FROM llm_tape ORDER BY id")]
    assert ops == (["llm_embedding", "llm_slice", "llm_add"] + layer_ops() * cfg.n_layer
                   + ["llm_layernorm", "llm_matmul", "llm_cross_entropy"])
    # every weight is a named leaf, used where HF uses it (wte twice: embedding and lm_head)
    uses = dict(conn.execute("""
        SELECT r.param_name, count(*) FROM llm_tensor_rt r JOIN llm_tape t ON r.id = ANY (t.inputs)
        WHERE r.param_name IS NOT NULL GROUP BY 1""").fetchall())
    hf_names = {n.removeprefix("transformer."): p for n, p in model.named_parameters()}
    assert set(uses) == set(hf_names)
    assert uses["wte.weight"] == 2 and all(n == 1 for k, n in uses.items() if k != "wte.weight")

    assert q(conn, "SELECT llm_zero_grad(%s)", name) >= 0
    q(conn, "SELECT llm_backprop()")
    assert q(conn, "SELECT llm_accumulate_grads(%s)", name) == len(hf_names)

    model.zero_grad()
    logits = model(torch.tensor([tokens])).logits[0]
    want = F.cross_entropy(logits, torch.tensor(targets), ignore_index=-100)
    want.backward()
    assert abs(loss - want.item()) <= 1e-5 * abs(want.item())
    worst = 0.0
    for pname, grad in conn.execute("SELECT name, grad FROM llm_param WHERE model = %s", (name,)):
        worst = max(worst, assert_grad_close(grad, hf_names[pname].grad.numpy(), 1e-4))
    print(f"{name}: worst gradient error vs HF {worst:.2e}")

    # accumulate adds: a second call doubles, llm_zero_grad clears
    q(conn, "SELECT llm_accumulate_grads(%s)", name)
    twice = q(conn, "SELECT grad FROM llm_param WHERE model = %s AND name = 'wte.weight'", name)
    assert_grad_close(twice, 2 * hf_names["wte.weight"].grad.numpy(), 2e-4)
    assert q(conn, "SELECT llm_zero_grad(%s)", name) == len(hf_names)
    assert q(conn, "SELECT count(*) FROM llm_param WHERE model = %s AND grad IS NOT NULL", name) == 0


def test_gpt2_logits_link_to_a_later_cross_entropy(conn, gpt2_models):
    """llm_cross_entropy(llm_logits(...)) in SQL: the logits are found by value."""
    model = gpt2_models["ag_odd"]
    tokens = [5, 77, 300, 2, 516, 9]
    targets = tokens[1:] + [-100]
    record(conn)
    q(conn, "SELECT llm_cross_entropy(llm_logits('ag_odd', %s), %s)", tokens, targets)
    ce_input = q(conn, "SELECT inputs[1] FROM llm_tape WHERE op = 'llm_cross_entropy'")
    assert q(conn, "SELECT op FROM llm_tape t JOIN llm_tensor_rt r ON r.produced_by = t.id WHERE r.id = %s",
             ce_input) == "llm_matmul"
    q(conn, "SELECT llm_backprop()")
    model.zero_grad()
    F.cross_entropy(model(torch.tensor([tokens])).logits[0], torch.tensor(targets),
                    ignore_index=-100).backward()
    got = q(conn, "SELECT grad FROM llm_tensor_rt WHERE param_name = 'h.1.mlp.c_fc.weight'")
    assert_grad_close(got, model.transformer.h[1].mlp.c_fc.weight.grad.numpy(), 1e-4)


def test_gpt2_meta_mode_and_off(conn, gpt2_models):
    tokens = [1, 2, 3, 4]
    record(conn, "off")
    q(conn, "SELECT llm_loss('ag_odd', %s, %s)", tokens, tokens[1:] + [-100])
    assert q(conn, "SELECT count(*) FROM llm_tape") == 0
    record(conn, "meta")
    q(conn, "SELECT llm_loss('ag_odd', %s, %s)", tokens, tokens[1:] + [-100])
    assert q(conn, "SELECT count(*) FROM llm_tape") == 3 + 14 * 2 + 3
    assert q(conn, "SELECT count(*) FROM llm_tensor_rt WHERE data IS NOT NULL") == 0
    assert q(conn, "SELECT shape FROM llm_tape WHERE op = 'llm_attention_qkv' LIMIT 1") == [4, 34]


@pytest.mark.parametrize("mode", ["meta", "full"])
def test_gpt2_recording_changes_no_bit_of_what_it_returns(conn, gpt2_models, mode):
    """The tape of llm_logits and llm_loss is built after their forward, from what
    it saved: recording or not, they return the same bits."""
    vocab = gpt2_models["ag_odd"].config.vocab_size
    tokens = np.random.default_rng(7).integers(0, vocab, 29).tolist()
    targets = tokens[1:] + [-100]
    targets[3] = -100
    calls = [("SELECT llm_loss('ag_odd', %s, %s)", tokens, targets),
             ("SELECT llm_logits('ag_odd', %s, false)", tokens),
             ("SELECT llm_logits('ag_odd', %s, true)", tokens)]
    record(conn, "off")
    off = [q(conn, sql, *args) for sql, *args in calls]
    record(conn, mode)
    on = [q(conn, sql, *args) for sql, *args in calls]
    record(conn, "off")
    assert np.float32(on[0]).tobytes() == np.float32(off[0]).tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(on[1:], off[1:]))
