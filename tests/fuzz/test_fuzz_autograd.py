"""Fuzz the autograd tape: mode names of every kind, random chains of ops
recorded in each mode, llm_backprop with roots and seeds in and out of range
(or of the wrong shape), leaves of any tensor, accumulate/zero on models
that exist or not.  Every answer is a result or an ERROR with an expected
SQLSTATE; gradients are finite whenever the values are."""
from __future__ import annotations

import numpy as np
from fuzz_harness import FuzzDB, Tally
from generators import EDGE_INTS, cases

COVERS = {"llm_autograd_mode", "llm_tensor_rt_leaf", "llm_backprop", "llm_accumulate_grads",
          "llm_zero_grad", "llm_prune_autograd_state"}

MODES = ["off", "meta", "full", "OFF", "Full", "", " full", "on", "true", "meta\x01", "ｆｕｌｌ", "x" * 1000]

UNARY = ["llm_gelu({})", "llm_scale({}, 0.5)", "llm_softmax({})", "llm_transpose({})",
         "llm_reshape({}, '{{-1}}')", "llm_slice({}, 0, 1)"]


def test_fuzz_autograd(db: FuzzDB):
    tally = Tally("autograd")
    for mode in MODES:
        what = f"llm_autograd_mode({mode!r})"
        out = tally.record(db.run("SELECT llm_autograd_mode(%s)", [mode]), what)
        tally.expect_outcome(what, out, "ok" if mode in ("off", "meta", "full") else {"22023"})
    for rng in cases(60, seed=81):
        mode = rng.choice(["off", "meta", "full"])
        db.run("SELECT llm_autograd_mode(%s)", [mode])
        db.run("SELECT llm_prune_autograd_state()")
        rows, cols = rng.choice([1, 2, 7]), rng.choice([1, 3, 17])
        x = np.random.default_rng(rng.randrange(1 << 30)).standard_normal((rows, cols)).astype(np.float32)
        if rng.random() < 0.2:
            x[0, 0] = rng.choice([np.inf, -np.inf, np.nan, 3e38])
        expr = "llm_tensor_rt_leaf(%s, 'x')"
        for _ in range(rng.randrange(1, 5)):
            expr = rng.choice(UNARY).format(expr)
        out = tally.record(db.run(f"SELECT {expr}", [x]), expr)
        recorded = out.ok and mode != "off"
        root = rng.choice([None, None] + EDGE_INTS)
        seed_shape = rng.choice([None, (rows, cols), (cols, rows), (1,), (rows * cols,)])
        seed = None if seed_shape is None else np.ones(seed_shape, np.float32)
        what = f"{mode}: {expr}; llm_backprop({root}, seed {seed_shape})"
        back = tally.record(db.run("SELECT llm_backprop(%s, %s)", [root, seed]), what)
        if not recorded:
            tally.expect_error(what, back, {"55000", "22023"}, "nothing was recorded")
        elif not back.ok:
            tally.expect_error(what, back, {"55000", "22023", "22000"})
        elif np.isfinite(x).all():
            grads = db.run("SELECT grad FROM llm_tensor_rt WHERE grad IS NOT NULL").rows
            if not all(np.isfinite(g).all() for (g,) in grads):
                tally.violation("non-finite gradient from finite values", what)
        model = rng.choice(["no such model", "", "x" * 200])
        tally.expect_ok(model, tally.record(db.run("SELECT llm_accumulate_grads(%s)", [model]), model))
        tally.expect_ok(model, tally.record(db.run("SELECT llm_zero_grad(%s)", [model]), model))
    tally.expect_error("llm_zero_grad(NULL)", tally.record(db.run("SELECT llm_zero_grad(NULL)")), {"22004"})
    db.run("SELECT llm_autograd_mode('off')")
    db.run("SELECT llm_prune_autograd_state()")
    tally.finish(db)
