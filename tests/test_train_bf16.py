"""bf16 mixed-precision training (dtype => 'bf16'): a step against
torch.autocast('cpu', dtype=torch.bfloat16) on the same HF model and batch,
what it rounds (the matmul gradients are bf16 values, the rest is not),
bit-identical at any thread count, the dtype in the logs, bad dtypes.

The meaning (README, "Mixed precision"): every matmul (Conv1D, the lm_head)
reads its operands rounded to bf16, sums in fp32 and rounds its result to
bf16, forward and backward, as autocast runs nn.Linear / addmm on the CPU;
weights, AdamW state and everything else stay fp32.  Both sides round the
same values, but not in the same order (torch's GEMM and flash attention sum
differently), so a value near a rounding boundary can land one bf16 step
(2^-8 relative) apart, and that difference travels on: the two agree to the
noise of bf16, not bit for bit -- about as close as either is to fp32.
"""
import numpy as np
import psycopg
import pytest

torch = pytest.importorskip("torch", reason="the reference is torch.autocast")
pytest.importorskip("transformers", reason="the reference model is HF's GPT-2")

from test_train_step import batch, params  # noqa: E402
from train_reference import (batch_loss, load_into_pg, make_reference_model,  # noqa: E402
                             named_parameters)

# 3 layers, head size 16, n_inner 4C: a few layers for the rounding to travel through
CFG = dict(n_layer=3, n_head=4, n_embd=64, n_positions=40, vocab_size=517)
MATMULS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@pytest.fixture(autouse=True)
def drop_models(db_url):
    yield
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(r"DELETE FROM llm_model_config WHERE model LIKE 'bf\_%'")


def pg_step(conn, model, tokens, targets, dtype):
    """llm_train_step's loss and the gradients it wrote to llm_param.grad."""
    loss = conn.execute("SELECT llm_train_step(%s, %s, %s, lr => 1e-3, dtype => %s)",
                        [model, tokens.tolist(), targets.tolist(), dtype]).fetchone()[0]
    return loss, params(conn, model, "grad")


def torch_step(model, tokens, targets, autocast):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = batch_loss(model, tokens, targets)
    loss.backward()
    return loss.item(), {n: p.grad.numpy().copy() for n, p in named_parameters(model).items()}


def rel_errors(got, want):
    """||got - want|| / ||want|| per tensor."""
    return {n: np.linalg.norm(got[n].astype(np.float64) - w) / np.linalg.norm(w) for n, w in want.items()}


def is_bf16(x):
    return np.array_equal(x.view(np.uint32) & 0xFFFF, np.zeros(x.shape, np.uint32))


def test_a_bf16_step_matches_torch_autocast(conn):
    model = make_reference_model(CFG, seed=7)
    tokens, targets = batch(CFG["vocab_size"], 4, 33, 7)
    load_into_pg(conn, model, "bf_step")
    load_into_pg(conn, model, "bf_fp32")
    loss, grads = pg_step(conn, "bf_step", tokens, targets, "bf16")
    loss32, grads32 = pg_step(conn, "bf_fp32", tokens, targets, "fp32")
    want_loss, want = torch_step(model, tokens, targets, autocast=True)
    _, want32 = torch_step(model, tokens, targets, autocast=False)

    # The loss is a mean over 132 rows of logits rounded to bf16 (2^-9 relative
    # each): its error is far below one rounding; 1e-3 leaves room.
    assert abs(loss - want_loss) <= 1e-3 * want_loss
    # Each gradient went through ~2 roundings per matmul it passed (dY, then
    # dX / dW), ~2e-3 each, compounding over the layers: a few 1e-3 of its
    # norm (measured: 0.4-0.8%).  3e-2 fails on a missing or doubled scale,
    # a wrong operand or a transposed gradient, which are O(1).
    errors = rel_errors(grads, want)
    assert max(errors.values()) < 3e-2, errors
    # ... and on average as close to autocast as to fp32 arithmetic
    assert np.median(list(errors.values())) < 2 * np.median(list(rel_errors(grads, want32).values()))

    # It is bf16 arithmetic, not fp32's: the matmul gradients are bf16 values
    # (rounded results), LayerNorm's and wpe's are fp32 sums, and the loss
    # and gradients differ from the fp32 step by bf16's noise.
    for name, g in grads.items():
        if any(f".{m}." in name for m in MATMULS):
            assert is_bf16(g), f"{name}: not rounded to bf16"
        elif name.startswith(("wpe", "ln_f")) or ".ln_" in name:
            assert not is_bf16(g), f"{name}: rounded, but LayerNorm and wpe stay fp32"
    assert not is_bf16(grads32["h.0.mlp.c_fc.weight"])
    assert loss != loss32
    assert np.median(list(rel_errors(grads, grads32).values())) > 1e-3


def test_a_bf16_step_is_bit_identical_at_any_thread_count(conn):
    model = make_reference_model(CFG, seed=8)
    tokens, targets = batch(CFG["vocab_size"], 3, 29, 8)
    runs = []
    for threads in (1, 2):
        name = f"bf_threads_{threads}"
        load_into_pg(conn, model, name)
        conn.execute("SELECT set_config('pg_llm.threads', %s, false)", (str(threads),))
        loss, grads = pg_step(conn, name, tokens, targets, "bf16")
        runs.append((loss, grads, params(conn, name)))
    conn.execute("RESET pg_llm.threads")
    (loss1, grads1, data1), (loss2, grads2, data2) = runs
    assert loss1 == loss2
    assert all(grads1[n].tobytes() == grads2[n].tobytes() for n in grads1)
    assert all(data1[n].tobytes() == data2[n].tobytes() for n in data1)


def test_the_dtype_is_logged_and_replayed(conn):
    model = make_reference_model(CFG, seed=9)
    load_into_pg(conn, model, "bf_log")
    tokens, targets = batch(CFG["vocab_size"], 2, 9, 9)
    conn.execute("SELECT llm_checkpoint_save('bf_log')")
    ckpt = conn.execute("SELECT max(id) FROM llm_checkpoint WHERE model = 'bf_log'").fetchone()[0]
    pg_step(conn, "bf_log", tokens, targets, "bf16")
    pg_step(conn, "bf_log", tokens, targets, "fp32")
    assert conn.execute("SELECT array_agg(dtype ORDER BY id) FROM llm_train_log "
                        "WHERE model = 'bf_log'").fetchone()[0] == ["bf16", "fp32"]
    after = params(conn, "bf_log")
    # llm_replay re-runs each step in its own dtype: the same weights, bit for bit
    assert conn.execute("SELECT llm_replay('bf_log', %s, 2)", [ckpt]).fetchone()[0] == 2
    replayed = params(conn, "bf_log")
    assert all(after[n].tobytes() == replayed[n].tobytes() for n in after)


@pytest.mark.parametrize("call", [
    "SELECT llm_train_step('bf_bad', '{1,2,3}', '{2,3,4}', lr => 1e-3, dtype => 'fp16')",
    "CALL llm_train('bf_bad', steps => 1, dtype => 'fp16')",
])
def test_an_unknown_dtype_is_an_error_naming_it(db_url, conn, call):
    load_into_pg(conn, make_reference_model(CFG, seed=1), "bf_bad")
    before = params(conn, "bf_bad")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='dtype .*not "fp16"'):
        conn.execute(call)
    after = params(conn, "bf_bad")
    assert all(before[n].tobytes() == after[n].tobytes() for n in before)
    assert conn.execute("SELECT count(*) FROM llm_train_log WHERE model = 'bf_bad'").fetchone()[0] == 0


def test_a_bf16_run_is_logged_as_bf16_and_continues_only_in_bf16(conn):
    vocab = CFG["vocab_size"]
    stream = np.random.default_rng(3).integers(0, vocab, 8 * 16 + 1)
    conn.execute("SELECT llm_dataset_from_tokens(%s, 16, split => 'bf_split')", [stream.tolist()])
    model = make_reference_model(CFG, seed=3)
    load_into_pg(conn, model, "bf_run")
    load_into_pg(conn, model, "bf_copy")
    try:
        conn.execute("CALL llm_train('bf_run', steps => 3, batch_size => 2, split => 'bf_split', "
                     "run => 'r', dtype => 'bf16', notice_every => 0)")
        rows = conn.execute("SELECT dtype, loss, batch FROM llm_train_log WHERE model = 'bf_run' "
                            "ORDER BY id").fetchall()
        assert [r[0] for r in rows] == ["bf16"] * 3
        assert conn.execute("SELECT dtype FROM llm_train_run WHERE model = 'bf_run'").fetchone()[0] == "bf16"
        # its first step is llm_train_step's in bf16 on the same batch, bit for bit
        tokens, targets = conn.execute(
            "SELECT array_agg(d.tokens ORDER BY u.n), array_agg(d.target ORDER BY u.n) "
            "FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(id, n) JOIN llm_dataset d ON d.id = u.id",
            [rows[0][2]]).fetchone()
        first = conn.execute("SELECT llm_train_step('bf_copy', %s, %s, lr => 1e-3, dtype => 'bf16')",
                             [tokens, targets]).fetchone()[0]
        assert first == rows[0][1]
        # the run goes on in its dtype only
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="dtype = bf16, not fp32"):
            conn.execute("CALL llm_train('bf_run', steps => 3, batch_size => 2, split => 'bf_split', "
                         "run => 'r', notice_every => 0)")
    finally:
        conn.execute("DELETE FROM llm_dataset WHERE split = 'bf_split'")
