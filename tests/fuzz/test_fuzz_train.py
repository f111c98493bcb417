"""Fuzz the training entry points on a tiny model: llm_gradients,
llm_train_step and CALL llm_train -- token arrays of 0, 1 or 2 dimensions,
ragged against their targets, out of the vocabulary, NULL, longer than
n_positions; optimizer settings NaN, infinite or negative; unknown models.
Every answer is a result or a clean ERROR; a failed step writes nothing
(llm_param's fingerprint and llm_train_log are unchanged).  Also the
optimizer and data functions around them: llm_lr against nanoGPT's formula,
llm_dataset_from_tokens against the block count, llm_adamw_step, and the
checkpoint functions with unknown models and ids."""
from __future__ import annotations

import math

import pytest
from fuzz_harness import FuzzDB, Tally
from generators import INT32_MAX, cases, int_array_literal

MODEL = "fuzz_train"
CONFIG = dict(n_layer=1, n_head=2, n_embd=8, n_positions=6, vocab_size=13)
V, P = CONFIG["vocab_size"], CONFIG["n_positions"]
SPLIT = "fuzz_train"

COVERS = {"llm_gradients", "llm_train_step", "llm_train", "llm_lr", "llm_dataset_from_tokens", "llm_adamw_step",
          "llm_checkpoint_save", "llm_checkpoint_load", "llm_checkpoint_delete", "llm_model_shape"}

FLOATS = [1e-3, 0.0, -1e-3, math.nan, math.inf, -math.inf, 1e300, None]


@pytest.fixture(scope="module")
def model(db_url):
    db = FuzzDB(db_url)
    db.run("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    db.run("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
           "VALUES (%(model)s, %(n_layer)s, %(n_head)s, %(n_embd)s, %(n_positions)s, %(vocab_size)s)",
           dict(CONFIG, model=MODEL))
    assert db.run("SELECT llm_init(%s, 3)", [MODEL]).ok
    assert db.run("SELECT llm_dataset_from_tokens(%s, 4, split => %s)",
                  [[i % V for i in range(40)], SPLIT]).ok
    yield db
    db.run("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    db.run("DELETE FROM llm_dataset WHERE split = %s", [SPLIT])
    db.close()


def fingerprint(db):
    return db.run("SELECT array_agg(md5(llm_bytea(data)) || step ORDER BY name), "
                  "(SELECT count(*) FROM llm_train_log WHERE model = %s) FROM llm_param WHERE model = %s",
                  [MODEL, MODEL]).rows


def batch(rng):
    """(tokens, targets) nested lists, and the SQLSTATEs they must raise (empty: fine)."""
    B, T = rng.choice([1, 1, 2, 3]), rng.choice([1, 2, 4, P, P + 1, 0])
    tokens = [[rng.randrange(V) for _ in range(T)] for _ in range(B)]
    targets = [[rng.choice([rng.randrange(V), -100]) for _ in range(T)] for _ in range(B)]
    errors = set()
    if rng.random() < 0.2 and T:
        tokens[0][rng.randrange(T)] = rng.choice([-1, V, INT32_MAX, None])
    if rng.random() < 0.2 and T:
        targets[-1][rng.randrange(T)] = rng.choice([-101, V, None])
    if rng.random() < 0.15:
        targets = targets[:-1] if B > 1 else [t + [0] for t in targets]
    flat_tok = [x for row in tokens for x in row]
    flat_tgt = [x for row in targets for x in row]
    if T == 0 or T > P or len(targets) != B or any(len(r) != T for r in targets):
        errors.add("22023")
    if None in flat_tok or None in flat_tgt:
        errors.add("22004")
    if any(x is not None and not 0 <= x < V for x in flat_tok) or \
            any(x is not None and x != -100 and not 0 <= x < V for x in flat_tgt):
        errors.add("22023")
    if not errors and all(x == -100 for x in flat_tgt):
        errors.add("22023")
    if B == 1 and rng.random() < 0.5:
        tokens, targets = tokens[0], targets[0] if targets else []
    return tokens, targets, errors


def test_gradients_and_train_step(model):
    db = model
    tally = Tally("train: llm_gradients, llm_train_step")
    for rng in cases(150, seed=41):
        tokens, targets, errors = batch(rng)
        name = MODEL if rng.random() < 0.9 else "fuzz_nope"
        if name != MODEL:
            errors = errors | {"42704"}
        lt, lg = int_array_literal(tokens), int_array_literal(targets)
        what = (name, lt, lg)
        out = tally.record(db.run("SELECT count(*) FROM llm_gradients(%s, %s::int[], %s::int[])",
                                  [name, lt, lg]), what)
        if errors:
            tally.expect_error(what, out, errors)
        else:
            tally.expect_ok(what, out)
        lr = rng.choice(FLOATS)
        clip = rng.choice([None, 1.0, 0.0, -1.0, math.nan, math.inf])
        step_errors = set(errors)
        if lr is None:
            step_errors.add("22004")
        elif not (lr >= 0 and lr != math.inf) or (clip is not None and not (0 < clip < math.inf)):
            step_errors.add("22023")
        before = fingerprint(db)
        what = (name, lt, lg, lr, clip)
        out = tally.record(db.run("SELECT llm_train_step(%s, %s::int[], %s::int[], %s, clip => %s)",
                                  [name, lt, lg, lr, clip]), what)
        if step_errors:
            if tally.expect_error(what, out, step_errors) and fingerprint(db) != before:
                tally.violation("a failed llm_train_step wrote something", what)
        elif tally.expect_ok(what, out) and not math.isfinite(out.value) and lr < 1e100:
            tally.violation("a non-finite loss", what, str(out.value))
    tally.finish(db)


def test_train_procedure_settings(model):
    db = model
    tally = Tally("train: CALL llm_train")
    for rng in cases(40, seed=42):
        def pick(valid, invalid):
            """a valid value 4 times in 5: most calls get to train"""
            return rng.choice(valid) if rng.random() < 0.8 else rng.choice(invalid)
        steps = pick([1, 2], [0, -1, None])
        batch_size = pick([1, 2], [0, None])
        lr = pick([1e-3, 0.0], [-1e-3, math.nan, math.inf, -math.inf, None])
        warmup = pick([0], [1, -1, 5])
        dims = pick([{}, {"n_layer": 1}, {"d": 8}], [{"n_layer": 2}, {"vocab": 14}])
        workers = pick([None, 1, 2], [0, -3])
        split = pick([SPLIT], ["fuzz_none"])
        errors = set()
        if None in (steps, batch_size, lr):
            errors.add("22004")
        if (steps is not None and steps < 1) or (batch_size is not None and batch_size < 1) or \
                (lr is not None and not (0 <= lr < math.inf)) or warmup < 0 or \
                (steps is not None and steps >= 1 and warmup >= steps) or \
                dims in ({"n_layer": 2}, {"vocab": 14}) or workers in (0, -3):
            errors.add("22023")
        if not errors and split != SPLIT:
            errors.add("P0002")   # no_data_found, as llm_replay
        extra = "".join(f", {k} => {v}" for k, v in dims.items())
        what = (steps, batch_size, lr, warmup, dims, workers, split)
        out = tally.record(db.run(f"CALL llm_train(%s, %s, %s, %s, warmup => %s, grad_workers => %s, "
                                  f"split => %s, notice_every => 0{extra})",
                                  [MODEL, steps, batch_size, lr, warmup, workers, split]), what)
        if errors:
            tally.expect_error(what, out, errors)
        else:
            tally.expect_ok(what, out)
    tally.finish(db)


def nanogpt_lr(it, lr, warmup, decay, min_lr):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_lr_schedule(db):
    tally = Tally("train: llm_lr")
    for rng in cases(500, seed=43):
        step = rng.choice([0, 1, 5, 99, 100, 101, 10**6, -1, 2**62, None])
        lr = rng.choice([6e-4, 1.0, 0.0, 1e-300, -1e-3, math.nan, math.inf, None])
        warmup = rng.choice([0, 1, 10, 100, -1, 2**31 - 1])
        decay = rng.choice([100, 1000, 1, 0, -5, 2**31 - 1])
        min_lr = rng.choice([0.0, 6e-5, 1e-3, -1.0, math.nan, 2.0])
        what = (step, lr, warmup, decay, min_lr)
        out = tally.record(db.run("SELECT llm_lr(%s, %s, %s, %s, %s)", [step, lr, warmup, decay, min_lr]), what)
        if None in (step, lr):
            if tally.expect_ok(what, out) and out.value is not None:
                tally.violation("a NULL argument gave a value (the function is STRICT)", what)
            continue
        if step < 0 or not (0 <= lr < math.inf) or not (0 <= min_lr <= lr) or warmup < 0 or decay <= warmup:
            tally.expect_error(what, out, {"22023"})
        elif tally.expect_ok(what, out):
            want = nanogpt_lr(step, lr, warmup, decay, min_lr)
            if not math.isclose(out.value, want, rel_tol=1e-12, abs_tol=1e-300):
                tally.violation("llm_lr differs from nanoGPT's get_lr", what, f"{out.value} vs {want}")
    tally.finish(db)


def test_dataset_from_tokens(db):
    tally = Tally("train: llm_dataset_from_tokens")
    split = "fuzz_ds"
    for rng in cases(200, seed=44):
        n = rng.choice([0, 1, 2, 5, 9, 17, 40])
        tokens = [rng.randrange(50) for _ in range(n)]
        if rng.random() < 0.1 and n:
            tokens[rng.randrange(n)] = None
        if rng.random() < 0.1 and n:
            tokens[rng.randrange(n)] = -rng.randrange(1, 5)
        nested = rng.random() < 0.05 and n >= 2 and n % 2 == 0
        literal = int_array_literal([tokens[:n // 2], tokens[n // 2:]] if nested else tokens)
        block = rng.choice([1, 2, 4, 8, 0, -1, None])
        stride = rng.choice([None, None, 1, 3, 0, -2])
        what = (literal, block, stride)
        db.run("DELETE FROM llm_dataset WHERE split = %s", [split])
        out = tally.record(db.run("SELECT llm_dataset_from_tokens(%s::int[], %s, %s, %s)",
                                  [literal, block, stride, split]), what)
        step = stride if stride is not None else block
        if block is None:
            tally.expect_error(what, out, {"22004"})
        elif nested or None in tokens or n == 0:
            tally.expect_error(what, out, {"22023"})
        elif block < 1 or step < 1 or n < block + 1:
            tally.expect_error(what, out, {"22023"})
        elif any(t < 0 for t in tokens):
            tally.expect_error(what, out, {"23514"})   # the table's CHECK: token ids are >= 0
        elif tally.expect_ok(what, out):
            want = len(range(0, n - block, step))
            if out.value != want:
                tally.violation("rows added differ from the blocks that fit", what, f"{out.value} vs {want}")
    db.run("DELETE FROM llm_dataset WHERE split = %s", [split])
    tally.finish(db)


def test_adamw_step_and_checkpoints(model):
    db = model
    tally = Tally("train: llm_adamw_step, checkpoints")
    assert db.run("SELECT llm_train_step(%s, '{1,2,3}', '{2,3,4}', 1e-3)", [MODEL]).ok   # stores grad
    saved = []
    for rng in cases(120, seed=45):
        name = rng.choice([MODEL, MODEL, "fuzz_nope", None])
        kind = rng.choice(["adamw", "save", "load", "delete", "shape"])
        if kind == "adamw":
            lr = rng.choice([1e-3, 0.0, -1.0, math.nan, math.inf, None])
            norm = rng.choice([None, 1.0, 0.0, -1.0, math.inf])
            what = (kind, name, lr, norm)
            out = tally.record(db.run("SELECT llm_adamw_step(%s, %s, max_grad_norm => %s)", [name, lr, norm]), what)
            if name is None or lr is None:
                tally.expect_error(what, out, {"22004"})
            elif not (0 <= lr < math.inf) or (norm is not None and not (0 < norm < math.inf)):
                tally.expect_error(what, out, {"22023"})
            elif name != MODEL:
                tally.expect_error(what, out, {"42704"})
            else:
                tally.expect_ok(what, out)
        elif kind == "save":
            what = (kind, name)
            out = tally.record(db.run("SELECT llm_checkpoint_save(%s, 'fuzz')", [name]), what)
            if name is None:
                tally.expect_error(what, out, {"22004"})
            elif name != MODEL:
                tally.expect_error(what, out, {"42704"})
            elif tally.expect_ok(what, out):
                saved.append(out.value)
        elif kind in ("load", "delete"):
            ckpt = rng.choice(saved + [None, -1, 2**62]) if saved else rng.choice([None, -1, 2**62])
            what = (kind, name, ckpt)
            if kind == "load":
                out = tally.record(db.run("SELECT llm_checkpoint_load(%s, %s)", [name, ckpt]), what)
                bad = name is None or ckpt is None
                tally.expect_outcome(what, out, {"22004"} if bad else
                                     {"42704"} if name != MODEL or ckpt not in saved else "ok")
            else:
                out = tally.record(db.run("SELECT llm_checkpoint_delete(%s)", [ckpt]), what)
                tally.expect_outcome(what, out, {"22004"} if ckpt is None else
                                     {"42704"} if ckpt not in saved else "ok")
                if out.ok:
                    saved.remove(ckpt)
        else:
            what = (kind, name)
            out = tally.record(db.run("SELECT llm_model_shape(%s)", [name]), what)
            if tally.expect_ok(what, out) and (out.value is None) != (name != MODEL):
                tally.violation("llm_model_shape: NULL exactly for an unknown model", what, str(out.value))
    for ckpt in saved:
        db.run("SELECT llm_checkpoint_delete(%s)", [ckpt])
    tally.finish(db)
