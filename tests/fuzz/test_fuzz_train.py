"""Fuzz the training functions: llm_lr, llm_dataset_from_tokens, llm_adamw_step
(the training state's load, clip, AdamW and write-back), checkpoints, and the
internal llm_train_state_tensor -- settings NaN, infinite, negative, out of
range or NULL; token arrays empty, 2-D, with NULLs, negative ids or shifted
lower bounds; unknown models and checkpoints; bad paths.  Results are checked
against nanoGPT's schedule in Python, a numpy transcription of clip_grad_norm_
+ torch.optim.AdamW, and the rows the cut must give; a checkpoint must load
back bit for bit.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from fuzz_harness import FuzzDB, Tally, close, same_bits
from generators import EDGE_INTS, INT32_MAX, INT32_MIN, cases, int_array_literal
from test_fuzz_gpt2 import export_errors

MODEL = "fuzz_train"
OTHER = "fuzz_train_wide"                   # another shape: its checkpoints do not fit MODEL
CONFIG = dict(n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=16)

# The extension's functions this file fuzzes (test_fuzz_coverage.py checks that every one is somewhere).
COVERS = {"llm_lr", "llm_dataset_from_tokens", "llm_adamw_step", "llm_checkpoint_save", "llm_checkpoint_load",
          "llm_checkpoint_delete", "llm_model_shape", "llm_train_state_tensor"}

f32 = np.float32


def register(db, model, **config):
    db.run("DELETE FROM llm_model_config WHERE model = %s", [model])
    assert db.run("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                  "VALUES (%(model)s, %(n_layer)s, %(n_head)s, %(n_embd)s, %(n_positions)s, %(vocab_size)s)",
                  dict(config, model=model)).ok
    assert db.run("SELECT llm_init(%s, 5)", [model]).ok


@pytest.fixture(scope="module")
def models(db_url):
    """MODEL and OTHER, and a checkpoint of MODEL as initialised (its baseline)."""
    db = FuzzDB(db_url)
    register(db, MODEL, **CONFIG)
    register(db, OTHER, **dict(CONFIG, n_embd=12))
    baseline = db.run("SELECT llm_checkpoint_save(%s, 'fuzz baseline')", [MODEL]).value
    yield baseline
    db.run("DELETE FROM llm_checkpoint WHERE model IN (%s, %s)", [MODEL, OTHER])
    db.run("DELETE FROM llm_model_config WHERE model IN (%s, %s)", [MODEL, OTHER])
    db.run("DELETE FROM llm_dataset WHERE split LIKE 'fuzz%%'")
    db.close()


def model_name(rng):
    r = rng.random()
    if r < 0.85:
        return MODEL, set()
    if r < 0.9:
        return None, {"22004"}
    return rng.choice(["nope", "", "FUZZ_TRAIN", "fuzz_train ", "\u00e9"]), {"42704"}


# ---- llm_lr ----------------------------------------------------------------------

def nanogpt_lr(it, lr, warmup, decay, min_lr):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_lr(db):
    tally = Tally("train: llm_lr")
    floats = [0.0, -0.0, 1e-3, 6e-4, 1.0, 1e300, 5e-324, -1e-3, math.nan, math.inf, -math.inf, None]
    for rng in cases(400, seed=71):
        lr = rng.choice(floats[:5]) if rng.random() < 0.7 else rng.choice(floats)
        min_lr = rng.choice([0.0, None, (lr or 0) / 10, lr]) if rng.random() < 0.7 else rng.choice(floats)
        warmup = rng.randint(0, 20) if rng.random() < 0.7 else rng.choice(EDGE_INTS + [None])
        decay = min((warmup or 0) + rng.randint(1, 50), INT32_MAX) if rng.random() < 0.7 \
            else rng.choice(EDGE_INTS + [None])
        step = rng.randint(0, 100) if rng.random() < 0.7 else rng.choice([-1, 2**63 - 1, -2**63, INT32_MAX, None])
        args = [step, lr, warmup, decay] + ([] if min_lr is None and rng.random() < 0.5 else [min_lr])
        sql = "SELECT llm_lr(%s::bigint, %s, %s::int, %s::int" + (", %s)" if len(args) == 5 else ")")
        what = tuple(args)
        out = tally.record(db.run(sql, args), what)
        if any(a is None for a in args):                # STRICT
            if tally.expect_ok(what, out) and out.value is not None:
                tally.violation("a NULL argument did not give NULL", what, repr(out.rows))
            continue
        m = args[4] if len(args) == 5 else 0.0
        if (step < 0 or not 0 <= lr < math.inf or not 0 <= m <= lr or warmup < 0 or decay <= warmup):
            tally.expect_error(what, out, {"22023"})
        elif tally.expect_ok(what, out):
            want = 0.0 if lr == 0 else lr * (nanogpt_lr(step, lr, warmup, decay, m) / lr)
            if not (out.value == want or (math.isnan(out.value) and math.isnan(want))):
                tally.violation("llm_lr is not LambdaLR's nanoGPT schedule", what, f"{out.value!r} vs {want!r}")
    tally.finish(db)


# ---- llm_dataset_from_tokens ----------------------------------------------------------

def test_dataset_from_tokens(db, models):
    tally = Tally("train: llm_dataset_from_tokens")
    for i, rng in enumerate(cases(300, seed=72)):
        ids = [rng.randrange(100) for _ in range(rng.randint(0, 30))]
        kind = rng.choice(["good"] * 6 + ["null", "2-D", "negative", "shifted", "ignore"])
        literal, errors = None, set()
        if kind == "null" and ids:
            ids[rng.randrange(len(ids))] = None
        elif kind == "negative" and ids:
            ids[rng.randrange(len(ids))] = rng.choice([-1, -101, INT32_MIN])
        elif kind == "ignore" and ids:
            ids[rng.randrange(len(ids))] = -100
        if kind == "2-D" and ids:
            literal = "{" + ",".join("{%d}" % (x or 0) for x in ids) + "}"
            errors.add("22023")
        elif kind == "shifted" and ids:
            lower = rng.choice([0, -5, 7, INT32_MAX - len(ids) - 1, INT32_MIN])   # (upper < INT32_MAX)
            literal = f"[{lower}:{lower + len(ids) - 1}]=" + int_array_literal(ids)
        else:
            literal = None if rng.random() < 0.05 else int_array_literal(ids)
        block = rng.randint(1, 8) if rng.random() < 0.8 else rng.choice([0, -1, INT32_MAX, INT32_MIN, None])
        stride = rng.choice([None, None, 1, 2, 3, 5]) if rng.random() < 0.8 else rng.choice([0, -1, INT32_MAX])
        split = None if rng.random() < 0.03 else f"fuzz{i}"
        what = (literal, block, stride, split)
        out = tally.record(db.run("SELECT llm_dataset_from_tokens(%s::int[], %s, %s, %s)",
                                  [literal, block, stride, split]), what)
        if literal is None or block is None or split is None:
            errors.add("22004")
        elif not ids or None in ids:
            errors.add("22023")
        elif block < 1 or (stride if stride is not None else block) < 1 or block > len(ids) - 1:
            errors.add("22023")
        step = stride if stride is not None else block
        rows = []
        if not errors:
            rows = [(ids[s:s + block], ids[s + 1:s + block + 1]) for s in range(0, len(ids) - block, step)]
            if any(x < 0 for t, _ in rows for x in t) or any(x < -100 for _, y in rows for x in y):
                errors.add("23514")                 # llm_dataset_token_ids
        if errors:
            tally.expect_error(what, out, errors)
        elif tally.expect_ok(what, out):
            got = db.run("SELECT tokens, target FROM llm_dataset WHERE split = %s ORDER BY id", [split]).rows
            if out.value != len(rows) or [tuple(r) for r in got] != rows:
                tally.violation("the blocks are not the tokens cut and shifted", what, f"{out.value}: {got[:2]}")
        if split:
            db.run("DELETE FROM llm_dataset WHERE split = %s", [split])
    tally.finish(db)


# ---- llm_adamw_step -------------------------------------------------------------------

def fma32(a, b, c):
    return (np.float64(a) * b.astype(np.float64) + c.astype(np.float64)).astype(f32) \
        if np.isscalar(a) else (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(f32)


def reference_step(state, lr, wd, beta1, beta2, eps, max_norm):
    """clip_grad_norm_ then torch.optim.AdamW (single tensor, float32), in numpy.
    state: name -> (data, grad, m, v, step).  Returns (name -> (data, grad, m, v), total norm)."""
    with np.errstate(all="ignore"):
        norms = {n: f32(math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))) for n, (_, g, _, _, _) in state.items()}
        total = f32(math.sqrt(sum(float(x) ** 2 for x in norms.values())))
        coef = f32(1.0)
        if max_norm is not None:
            coef = f32(f32(f32(1.0) / f32(total + f32(1e-6))) * f32(max_norm))
            coef = min(coef, f32(1.0)) if not np.isnan(coef) else coef
        out = {}
        for name, (p, g, m, v, step) in state.items():
            g = g * coef if max_norm is not None else g
            t = step + 1
            if p.ndim >= 2 and wd != 0:
                p = p * f32(1 - lr * wd)
            w = f32(1 - beta1)
            m = fma32(w, g - m, m) if abs(w) < 0.5 else fma32(f32(w - f32(1)), g - m, g)
            v = fma32(f32(1 - beta2) * g, g, v * f32(beta2))
            bc1, bc2 = 1 - beta1 ** float(t), 1 - beta2 ** float(t)
            denom = np.sqrt(v) / f32(bc2 ** 0.5) + f32(eps)
            p = p + (f32(-(lr / bc1)) * m) / denom
            out[name] = (p, g, m, v)
    return out, total


def read_state(db):
    return {n: (d, g, m, v, s) for n, d, g, m, v, s in db.run(
        "SELECT name, data, grad, coalesce(m, llm_fill(shape, 0)), coalesce(v, llm_fill(shape, 0)), step "
        "FROM llm_param WHERE model = %s", [MODEL]).rows}


SETTINGS = {  # name: (usual values, odd ones)
    "lr": ([1e-3, 0.1, 0.0], [-1e-3, math.nan, math.inf, -0.0, 1e30, 5e-324, None]),
    "weight_decay": ([0.0, 0.01, 0.1], [-0.1, math.nan, math.inf, 1e30, None]),
    "beta1": ([0.9, 0.0, 0.5, 0.3], [1.0, -0.1, math.nan, 1 - 1e-16, math.inf, None]),
    "beta2": ([0.999, 0.95, 0.0], [1.0, -1e-9, math.nan, None]),
    "eps": ([1e-8, 0.0, 1e-3], [-1e-8, math.nan, math.inf, None]),
    "max_grad_norm": ([None, 1.0, 0.01, 1e6], [0.0, -1.0, math.nan, math.inf]),
}
LIMITS = {"lr": (0, math.inf), "weight_decay": (0, math.inf), "beta1": (0, 1), "beta2": (0, 1), "eps": (0, math.inf)}


def test_adamw_step(db, models):
    tally = Tally("train: llm_adamw_step")
    for rng in cases(150, seed=73):
        if rng.random() < 0.2:                              # back to sane weights now and then
            db.run("SELECT llm_checkpoint_load(%s, %s)", [MODEL, models])
        kind = rng.choice(["normal"] * 8 + ["special", "null"])
        if kind == "null":
            db.run("UPDATE llm_param SET grad = NULL WHERE model = %s AND name = 'ln_f.bias'", [MODEL])
        else:
            seed = rng.getrandbits(31)
            db.run("UPDATE llm_param SET grad = llm_randn(shape, %s, %s + length(name)) WHERE model = %s",
                   [rng.choice([0.01, 1.0, 100.0]), seed, MODEL])
            if kind == "special":
                value = rng.choice(["NaN", "Infinity", "-Infinity", "0"])
                db.run(f"UPDATE llm_param SET grad = llm_fill(shape, '{value}') WHERE model = %s "
                       "AND name = 'h.0.ln_2.bias'", [MODEL])
        settings = {k: (rng.choice(usual) if rng.random() < 0.85 else rng.choice(odd))
                    for k, (usual, odd) in SETTINGS.items()}
        model, errors = model_name(rng)
        args = [model] + [settings[k] for k in SETTINGS]
        what = tuple(args)
        before = read_state(db)
        out = tally.record(db.run("SELECT llm_adamw_step(%s, %s, %s, %s, %s, %s, %s)", args), what)
        errors = set(errors)
        for k, (lo, hi) in LIMITS.items():
            x = settings[k]
            if x is None:
                errors.add("22004")
            elif not lo <= x < hi:
                errors.add("22023")
        x = settings["max_grad_norm"]
        if x is not None and not 0 < x < math.inf:
            errors.add("22023")
        if kind == "null" and not errors:
            errors.add("22004")
        if errors:
            if tally.expect_error(what, out, errors):
                after = read_state(db)
                if any(not same_bits(before[n][c], after[n][c]) for n in before for c in range(4)) \
                        or any(before[n][4] != after[n][4] for n in before):
                    tally.violation("a refused step wrote to llm_param", what, "")
            continue
        if not tally.expect_ok(what, out):
            continue
        want, total = reference_step(before, *(settings[k] for k in SETTINGS))
        ok, why = close(out.value, total, 1e-6, 0)
        if not ok:
            tally.violation("the returned norm is not clip_grad_norm_'s", what, why)
        after = read_state(db)
        for name, (p, g, m, v) in want.items():
            for label, got, ref in (("data", after[name][0], p), ("grad", after[name][1], g),
                                    ("m", after[name][2], m), ("v", after[name][3], v)):
                finite = np.abs(ref[np.isfinite(ref)])
                ok, why = close(got, ref, 1e-5, 1e-6 * (finite.max() if finite.size else 0))
                if not ok:
                    tally.violation(f"{label} differs from clip_grad_norm_ + AdamW in numpy", what,
                                    f"{name}: {why}")
                    break
            if after[name][4] != before[name][4] + 1:
                tally.violation("the step counter did not advance by one", what, name)
    tally.finish(db)


# ---- checkpoints -------------------------------------------------------------------------

def test_checkpoints(db, models, server_dir):
    tally = Tally("train: llm_checkpoint_save, _load, _delete")
    db.run("SELECT llm_checkpoint_load(%s, %s)", [MODEL, models])
    saved = {models: read_state(db)}                        # checkpoint id -> the state it saved
    for rng in cases(150, seed=74):
        kind = rng.choice(["save", "save", "load", "load", "delete", "train"])
        if kind == "train":                                 # move the weights on
            db.run("UPDATE llm_param SET grad = llm_randn(shape, 1, %s) WHERE model = %s",
                   [rng.getrandbits(20), MODEL])
            db.run("SELECT llm_adamw_step(%s, 0.01)", [MODEL])
            continue
        count = db.run("SELECT count(*) FROM llm_checkpoint").value
        if kind == "save":
            model, errors = model_name(rng)
            path = rng.choice([None] * 4 + [str(server_dir / "c" / f"{rng.getrandbits(16)}.safetensors"),
                                            "relative.safetensors", str(server_dir), "/proc/nope/x.st"])
            note = rng.choice([None, "a note", "\u00e9\u00e8", "'; DROP TABLE llm_param; --"])
            what = ("save", model, note, path)
            out = tally.record(db.run("SELECT llm_checkpoint_save(%s, %s, %s)", [model, note, path]), what)
            errors = set(errors)
            if path is not None and not errors:
                errors |= export_errors("pg_llm_export_safetensors", path)
            if errors:
                if tally.expect_error(what, out, errors) and db.run("SELECT count(*) FROM llm_checkpoint").value != count:
                    tally.violation("a failed save left a checkpoint", what, "")
            elif tally.expect_ok(what, out):
                saved[out.value] = read_state(db)
                row = db.run("SELECT model, note, path, tensors FROM llm_checkpoints WHERE id = %s", [out.value]).rows
                if row != [(MODEL, note, path, len(saved[out.value]))]:
                    tally.violation("llm_checkpoints does not list the save", what, repr(row))
        elif kind == "load":
            ids = list(saved) + [-1, 0, 2**62, None]
            ckpt = rng.choice(ids)
            model = rng.choice([MODEL] * 4 + [OTHER, "nope", None])
            what = ("load", model, ckpt)
            before = {m: db.run("SELECT array_agg(md5(llm_bytea(data)) ORDER BY name) FROM llm_param "
                                "WHERE model = %s", [m]).value for m in (MODEL, OTHER)}
            out = tally.record(db.run("SELECT llm_checkpoint_load(%s, %s)", [model, ckpt]), what)
            errors = set()
            if model is None or ckpt is None:
                errors.add("22004")
            elif model not in (MODEL, OTHER):
                errors.add("42704")
            elif ckpt not in saved:
                errors.add("42704")
            elif model == OTHER:
                errors.add("22023")
            if errors:
                if tally.expect_error(what, out, errors):
                    after = {m: db.run("SELECT array_agg(md5(llm_bytea(data)) ORDER BY name) FROM llm_param "
                                       "WHERE model = %s", [m]).value for m in (MODEL, OTHER)}
                    if after != before:
                        tally.violation("a refused load wrote to llm_param", what, "")
            elif tally.expect_ok(what, out):
                now, then = read_state(db), saved[ckpt]
                if any(not same_bits(now[n][c], then[n][c]) for n in then for c in (0, 2, 3)) \
                        or any(now[n][4] != then[n][4] or now[n][1] is not None for n in then):
                    tally.violation("a load did not restore the saved state bit for bit", what, "")
        else:
            ckpt = rng.choice([c for c in saved if c != models] + [-1, 2**62, None])
            what = ("delete", ckpt)
            out = tally.record(db.run("SELECT llm_checkpoint_delete(%s)", [ckpt]), what)
            if ckpt is None:
                tally.expect_error(what, out, {"22004"})
            elif ckpt not in saved:
                tally.expect_error(what, out, {"42704"})
            elif tally.expect_ok(what, out):
                del saved[ckpt]
                if db.run("SELECT count(*) FROM llm_checkpoint_param WHERE checkpoint = %s", [ckpt]).value:
                    tally.violation("a deleted checkpoint kept its parameters", what, "")
    left = [p.name for p in server_dir.rglob("*.tmp*")]
    if left:
        tally.violation("a checkpoint file left temporary files", left, "")
    tally.finish(db)


# ---- the small ones -------------------------------------------------------------------------

def test_model_shape_and_state_tensor(db, models):
    tally = Tally("train: llm_model_shape, llm_train_state_tensor")
    for rng in cases(100, seed=75):
        model = rng.choice([MODEL, OTHER, "nope", None, ""])
        out = tally.record(db.run("SELECT llm_model_shape(%s)", [model]), ("llm_model_shape", model))
        if tally.expect_ok(model, out):
            cfg = dict(CONFIG, n_embd=12) if model == OTHER else CONFIG
            want = (None if model not in (MODEL, OTHER) else
                    dict(cfg, n_inner=4 * cfg["n_embd"], layer_norm_eps=1e-05))
            if out.value != want:
                tally.violation("llm_model_shape is not the model's settings", model, repr(out.value))
        args = [rng.choice([MODEL, "nope", None]), rng.choice(["wte.weight", "nope", None]),
                rng.choice(["data", "grad", "m", "v", "x", None])]
        what = ("llm_train_state_tensor", *args)
        out = tally.record(db.run("SELECT llm_train_state_tensor(%s, %s, %s)", args), what)
        if None in args:                                    # STRICT
            if tally.expect_ok(what, out) and out.value is not None:
                tally.violation("a NULL argument did not give NULL", what, repr(out.rows))
        else:                                               # no write-back is running
            tally.expect_error(what, out, {"55000"})
    tally.finish(db)
