"""Fuzz the training entry points on a tiny model: llm_gradients,
llm_train_step and CALL llm_train -- token arrays of 0, 1 or 2 dimensions,
ragged against their targets, out of the vocabulary, NULL, longer than
n_positions; optimizer settings NaN, infinite or negative; unknown models.
Every answer is a result or a clean ERROR; a failed step writes nothing
(llm_param's fingerprint and llm_train_log are unchanged).  The optimizer,
data and checkpoint functions are fuzzed in test_fuzz_train.py."""
from __future__ import annotations

import math

import pytest
from fuzz_harness import FuzzDB, Tally
from generators import INT32_MAX, cases, int_array_literal

MODEL = "fuzz_train_step"
CONFIG = dict(n_layer=1, n_head=2, n_embd=8, n_positions=6, vocab_size=13)
V, P = CONFIG["vocab_size"], CONFIG["n_positions"]
SPLIT = "fuzz_train_step"

COVERS = {"llm_gradients", "llm_train_step", "llm_train"}

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

