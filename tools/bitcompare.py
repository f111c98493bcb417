"""Bit-compare the GPT-2 of two builds of pg_llm: record what one build
computes, then check that another computes exactly the same bits.

    python tools/bitcompare.py record before.npz     # with the old build installed
    python tools/bitcompare.py compare before.npz    # with the new one: "N of N identical"

It connects as pg_llm_lab.connect() does ($DATABASE_URL, or the embedded
cluster under $PG_LLM_LAB_DATA), imports a random-init HuggingFace model
(a GPT2Config of odd sizes, seeded: the same weights every run) and runs a
fixed set of calls, saving every output as one array:

    llm_logits (all rows and last_only), llm_loss (with ignored targets),
    llm_generate_tokens (greedy and seeded sampling), llm_beam_search_tokens,
    llm_gradients of a batch, llm_train_step x3 (losses, then every
    parameter's data, grad, m, v), CALL llm_train (logged losses, weights),
    and with pg_llm.autograd_mode = full: the tape (llm_tape rows and every
    llm_tensor_rt value and gradient after llm_backprop) of llm_loss,
    llm_logits and llm_train_step.

compare prints each array that differs (and how) and the count of
identical ones; it exits 1 unless all are identical.  Both runs must use
the same pg_llm.simd and machine; the thread count does not matter (the
kernels are bit-identical at any count).
"""
from __future__ import annotations

import sys

import numpy as np

import pg_llm_lab

MODEL = "bitcompare"
CONFIG = dict(n_layer=2, n_head=3, n_embd=48, n_positions=40, vocab_size=211)
B, T = 3, 17


def hf_model():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(1234)
    cfg = GPT2Config(bos_token_id=0, eos_token_id=0, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0,
                     **CONFIG)
    return GPT2LMHeadModel(cfg).eval()


def fresh_model(conn) -> None:
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    pg_llm_lab.import_hf(conn, hf_model(), MODEL, progress=False)


def batch(seed: int):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG["vocab_size"], (B, T))
    targets = np.roll(tokens, -1, axis=1)
    targets[:, -1] = -100
    targets[1, :5] = -100
    return tokens.tolist(), targets.tolist()


def params(conn, prefix: str, out: dict) -> None:
    for name, data, grad, m, v in conn.execute(
            "SELECT name, data, grad, m, v FROM llm_param WHERE model = %s ORDER BY name", [MODEL]):
        for column, value in (("data", data), ("grad", grad), ("m", m), ("v", v)):
            if value is not None:
                out[f"{prefix}/{name}/{column}"] = np.asarray(value)


def tape(conn, prefix: str, out: dict) -> None:
    """The tape as the tables hold it: ops (name, inputs, output, shape, attrs) and tensors."""
    ops = conn.execute("SELECT op, inputs, output, shape, attrs::text FROM llm_tape ORDER BY id").fetchall()
    out[f"{prefix}/ops"] = np.array([repr(op) for op in ops])
    for tid, shape, data, grad, param_name, produced_by in conn.execute(
            "SELECT id, shape, data, grad, param_name, produced_by FROM llm_tensor_rt ORDER BY id"):
        out[f"{prefix}/tensor{tid}/meta"] = np.array([repr((shape, param_name, produced_by))])
        for column, value in (("data", data), ("grad", grad)):
            if value is not None:
                out[f"{prefix}/tensor{tid}/{column}"] = np.asarray(value)


def inference(conn, out: dict) -> None:
    tokens, targets = batch(1)
    seq, tgt = tokens[0], targets[1]
    one = lambda sql, *args: conn.execute(sql, [MODEL, *args]).fetchone()[0]  # noqa: E731
    out["llm_logits"] = np.asarray(one("SELECT llm_logits(%s, %s, false)", seq))
    out["llm_logits/last_only"] = np.asarray(one("SELECT llm_logits(%s, %s, true)", seq))
    out["llm_loss"] = np.float32(one("SELECT llm_loss(%s, %s, %s)", seq, tgt))
    out["generate/greedy"] = np.array(one("SELECT llm_generate_tokens(%s, %s, 12, temperature => 0)", seq[:5]))
    out["generate/sampled"] = np.array(one(
        "SELECT llm_generate_tokens(%s, %s, 12, temperature => 0.9, top_k => 40, seed => 7)", seq[:5]))
    beams = conn.execute("SELECT score, tokens FROM llm_beam_search_tokens(%s, %s, 3, 8) ORDER BY rank",
                         [MODEL, seq[:4]]).fetchall()
    out["beam/scores"] = np.array([s for s, _ in beams])
    out["beam/tokens"] = np.array([t for _, t in beams])
    for name, grad in conn.execute("SELECT name, grad FROM llm_gradients(%s, %s, %s)", [MODEL, tokens, targets]):
        out[f"llm_gradients/{name}"] = np.asarray(grad)


def recorded(conn, out: dict) -> None:
    tokens, targets = batch(2)
    conn.execute("SELECT llm_autograd_mode('full'), llm_prune_autograd_state()")
    try:
        out["full/llm_loss"] = np.float32(conn.execute(
            "SELECT llm_loss(%s, %s, %s)", [MODEL, tokens[0], targets[0]]).fetchone()[0])
        conn.execute("SELECT llm_backprop()")
        tape(conn, "tape/llm_loss", out)
        conn.execute("SELECT llm_prune_autograd_state()")
        out["full/llm_logits"] = np.asarray(conn.execute(
            "SELECT llm_logits(%s, %s, true)", [MODEL, tokens[0]]).fetchone()[0])
        tape(conn, "tape/llm_logits", out)
        for name, grad in conn.execute("SELECT name, grad FROM llm_gradients(%s, %s, %s)",
                                       [MODEL, tokens, targets]):
            out[f"full/llm_gradients/{name}"] = np.asarray(grad)
        conn.execute("SELECT llm_backprop()")
        tape(conn, "tape/llm_gradients", out)
    finally:
        conn.execute("SELECT llm_autograd_mode('off'), llm_prune_autograd_state()")


def training(conn, out: dict) -> None:
    fresh_model(conn)
    for step in range(3):
        tokens, targets = batch(10 + step)
        out[f"llm_train_step/{step}/loss"] = np.float32(conn.execute(
            "SELECT llm_train_step(%s, %s, %s, 1e-3, 0.1, 0.9, 0.95, 1e-8, 1.0)",
            [MODEL, tokens, targets]).fetchone()[0])
    params(conn, "llm_train_step", out)

    fresh_model(conn)
    conn.execute("DELETE FROM llm_dataset WHERE split = 'bitcompare'")
    stream = np.random.default_rng(3).integers(0, CONFIG["vocab_size"], 20 * T + 1)
    conn.execute("SELECT llm_dataset_from_tokens(%s, %s, split => 'bitcompare')", [stream.tolist(), T])
    first = conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
    conn.execute("CALL llm_train(%s, 4, batch_size => %s, lr => 1e-3, save_every => 2, split => 'bitcompare', "
                 "notice_every => 0)", [MODEL, B])
    out["llm_train/losses"] = np.array([r[0] for r in conn.execute(
        "SELECT loss FROM llm_train_log WHERE model = %s AND id > %s ORDER BY id", [MODEL, first])],
        dtype=np.float32)
    params(conn, "llm_train", out)
    conn.execute("DELETE FROM llm_dataset WHERE split = 'bitcompare'")


def run() -> dict:
    out: dict = {}
    with pg_llm_lab.connect() as conn:
        out["simd"] = np.array(conn.execute("SELECT llm_info()->>'simd'").fetchone()[0])
        fresh_model(conn)
        inference(conn, out)
        recorded(conn, out)
        training(conn, out)
        conn.execute("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return a.tobytes() == b.tobytes()
    return bool(np.array_equal(a, b))


def describe(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
    if a.dtype.kind != "f":
        return f"{int(np.sum(a != b))} of {a.size} differ"
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return f"{int(np.sum(a != b))} of {a.size} values differ, max |diff| {diff.max():.3g}"


def compare(path: str) -> int:
    before = dict(np.load(path, allow_pickle=False))
    now = run()
    if str(before.pop("simd")) != str(now.pop("simd")):
        print("warning: recorded with another pg_llm.simd")
    same = 0
    for key in sorted(set(before) | set(now)):
        if key not in now or key not in before:
            print(f"{key}: only in {'the record' if key in before else 'this run'}")
        elif same_bits(before[key], now[key]):
            same += 1
        else:
            print(f"{key}: {describe(before[key], now[key])}")
    total = len(set(before) | set(now))
    print(f"{same} of {total} arrays identical")
    return 0 if same == total else 1


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("record", "compare"):
        print(__doc__)
        return 2
    if sys.argv[1] == "record":
        out = run()
        np.savez(sys.argv[2], **out)
        print(f"recorded {len(out) - 1} arrays in {sys.argv[2]}")
        return 0
    return compare(sys.argv[2])


if __name__ == "__main__":
    sys.exit(main())
