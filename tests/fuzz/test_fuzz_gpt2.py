"""Fuzz the GPT-2 entry points on a tiny model: llm_logits, llm_loss,
llm_generate_tokens, llm_embedding_row, llm_init, the config and export
functions -- token arrays empty, too long, out of the vocabulary, NULL or
2-D; sampling settings NaN, infinite, negative or huge; unknown models; bad
paths.  Results are checked against a float64 numpy GPT-2 and against each
other (greedy decoding is the argmax of the logits; a seed repeats).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fuzz_harness import FuzzDB, Tally, close
from generators import EDGE_INTS, INT32_MAX, cases, int_array_literal

MODEL = "fuzz_gpt"
CONFIG = dict(n_layer=2, n_head=2, n_embd=8, n_positions=8, vocab_size=16)
V, T_MAX = CONFIG["vocab_size"], CONFIG["n_positions"]

# The extension's functions this file fuzzes (test_fuzz_coverage.py checks that every one is somewhere).
COVERS = {"llm_logits", "llm_loss", "llm_generate_tokens", "llm_embedding_row", "llm_init", "llm_param_shapes",
          "llm_hf_config", "llm_check_complete", "llm_register_hf_config", "pg_llm_export_safetensors",
          "llm_export_hf", "llm_write_safetensors", "llm_model_cache", "llm_model_cache_clear"}


@pytest.fixture(scope="module")
def weights(db_url):
    db = FuzzDB(db_url)
    db.run("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    db.run("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
           "VALUES (%(model)s, %(n_layer)s, %(n_head)s, %(n_embd)s, %(n_positions)s, %(vocab_size)s)",
           dict(CONFIG, model=MODEL))
    assert db.run("SELECT llm_init(%s, 3)", [MODEL]).ok
    # biases and LayerNorm weights start constant: make them random, so a mixed-up name shows
    assert db.run("UPDATE llm_param SET data = llm_add(data, llm_randn(shape, 0.1, length(name))) "
                  "WHERE model = %s", [MODEL]).ok
    w = dict(db.run("SELECT name, data FROM llm_param WHERE model = %s", [MODEL]).rows)
    yield {k: v.astype(np.float64) for k, v in w.items()}
    db.run("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    db.close()


def gpt2_logits(w, ids):
    """GPT-2 as HF computes it (Conv1D weights [in, out], tied lm_head), in float64."""
    def ln(x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * w[name + ".weight"] + w[name + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    T, C, H = len(ids), CONFIG["n_embd"], CONFIG["n_head"]
    h = w["wte.weight"][ids] + w["wpe.weight"][:T]
    for layer in range(CONFIG["n_layer"]):
        p = f"h.{layer}."
        qkv = ln(h, p + "ln_1") @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = np.split(qkv, 3, axis=1)
        y = np.zeros((T, C))
        for head in range(H):
            s = slice(head * C // H, (head + 1) * C // H)
            att = q[:, s] @ k[:, s].T / math.sqrt(C // H)
            att[np.triu_indices(T, 1)] = -np.inf
            att = np.exp(att - att.max(1, keepdims=True))
            y[:, s] = (att / att.sum(1, keepdims=True)) @ v[:, s]
        h = h + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        m = gelu(ln(h, p + "ln_2") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        h = h + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    return ln(h, "ln_f") @ w["wte.weight"].T


def tokens(rng, lo=1, hi=T_MAX):
    """(ids as a list or None, int[] literal, fitting SQLSTATEs if refused)."""
    kind = rng.choice(["good"] * 7 + ["empty", "long", "out", "null", "2-D"])
    ids = [rng.randrange(V) for _ in range(rng.randint(lo, hi))]
    if kind == "empty":
        return None, "{}", {"22023"}
    if kind == "long":
        ids = [rng.randrange(V) for _ in range(rng.randint(T_MAX + 1, 3 * T_MAX))]
        return None, int_array_literal(ids), {"22023"}
    if kind == "out":
        ids[rng.randrange(len(ids))] = rng.choice(EDGE_INTS + [V, -100])
        bad = any(not 0 <= i < V for i in ids)
        return (None if bad else ids), int_array_literal(ids), ({"22023"} if bad else None)
    if kind == "null":
        ids[rng.randrange(len(ids))] = None
        return None, int_array_literal(ids), {"22004"}
    if kind == "2-D":
        return None, "{" + ",".join("{%d}" % i for i in ids) + "}", {"22023", "2202E"}
    return ids, int_array_literal(ids), None


def model_name(rng):
    r = rng.random()
    if r < 0.9:
        return MODEL, None
    return rng.choice(["nope", "", "FUZZ_GPT", "fuzz_gpt ", "\u00e9"]), {"42704"}


def test_logits_and_loss(db, weights):
    tally = Tally("gpt2: llm_logits, llm_loss")
    for rng in cases(400, seed=21):
        model, bad_model = model_name(rng)
        ids, lit, bad_ids = tokens(rng)
        last_only = rng.random() < 0.3
        what = (model, lit, last_only)
        out = tally.record(db.run("SELECT llm_logits(%s, %s::int[], %s)", [model, lit, last_only]), what)
        errors = (bad_model or set()) | (bad_ids or set())
        if errors:
            tally.expect_error(what, out, errors)
            continue
        if not tally.expect_ok(what, out):
            continue
        want = gpt2_logits(weights, ids)
        ok, why = close(out.value, want[-1:] if last_only else want, 1e-4, 1e-5)
        if not ok:
            tally.violation("llm_logits differs from GPT-2 in numpy", what, why)
        # the loss against targets: next tokens, with -100 and bad ones now and then
        targets = ids[1:] + [-100]
        if rng.random() < 0.3:
            targets[rng.randrange(len(targets))] = rng.choice([-100, -1, V, INT32_MAX, None])
        if rng.random() < 0.1:
            targets = targets[:-1] if len(targets) > 1 else targets + [0]
        what = (model, lit, targets)
        out = tally.record(db.run("SELECT llm_loss(%s, %s::int[], %s::int[])",
                                  [model, lit, int_array_literal(targets)]), what)
        errors = set()
        if None in targets:
            errors.add("22004")
        if len(targets) != len(ids):
            errors.add("22023")
        if any(t is not None and t != -100 and not 0 <= t < V for t in targets):
            errors.add("22023")
        counted = [(row, t) for row, t in zip(want, targets) if t not in (-100, None)]
        if not errors and not counted:
            errors.add("22023")
        if errors:
            tally.expect_error(what, out, errors)
        elif tally.expect_ok(what, out):
            loss = np.mean([np.log(np.exp(row - row.max()).sum()) + row.max() - row[t] for row, t in counted])
            ok, why = close(np.float32(out.value), loss, 1e-4, 1e-5)
            if not ok:
                tally.violation("llm_loss differs from the cross-entropy of the logits", what, why)
    tally.finish(db)


TEMPERATURES = [0.0, 1.0, 0.7, 2.0, -1.0, -0.0, math.nan, math.inf, 1e300, 1e-300, 5e-324, None]
TOP_PS = [1.0, 0.9, 0.5, 1e-300, 0.0, -0.1, 1.0000001, math.nan, math.inf, None]
TOP_KS = [0, 1, 3, V, V + 1, -1, INT32_MAX, -2**31, None]


def test_generate(db, weights):
    tally = Tally("gpt2: llm_generate_tokens")
    for rng in cases(300, seed=22):
        model, bad_model = model_name(rng)
        prompt, lit, bad_prompt = tokens(rng, 1, 6)
        max_new = rng.randint(0, T_MAX - len(prompt or [])) if rng.random() < 0.8 else \
            rng.choice([0, 1, 2, 3, 5, 8, -1, INT32_MAX, -2**31])
        temperature, top_k, top_p = (rng.choice(pool[:4]) if rng.random() < 0.8 else rng.choice(pool)
                                     for pool in (TEMPERATURES, TOP_KS, TOP_PS))
        seed = rng.choice([None, 0, 1, -1, 2**63 - 1, -2**63, rng.getrandbits(62)])
        stop = rng.choice([None] * 4 + [0, 3, V - 1, V, -1, INT32_MAX])
        args = [model, lit, max_new, temperature, top_k, top_p, seed, stop]
        sql = "SELECT llm_generate_tokens(%s, %s::int[], %s, %s, %s, %s, %s, %s)"
        what = tuple(args)
        out = tally.record(db.run(sql, args), what)
        errors = set((bad_model or set()) | (bad_prompt or set()))
        t = 1.0 if temperature is None else temperature
        if not (t >= 0 and math.isfinite(t)):
            errors.add("22023")
        if top_k is not None and top_k < 0:
            errors.add("22023")
        p = 1.0 if top_p is None else top_p
        if not (0 < p <= 1):
            errors.add("22023")
        if max_new < 0:
            errors.add("22023")
        if prompt is not None and len(prompt) + max(max_new, 0) > T_MAX:
            errors.add("22023")
        if stop is not None and not 0 <= stop < V:
            errors.add("22023")
        if errors:
            tally.expect_error(what, out, errors)
            continue
        if not tally.expect_ok(what, out):
            continue
        new = out.value
        if not (len(new) <= max_new and all(0 <= x < V for x in new)
                and (stop is None or stop not in new[:-1]) and (len(new) == max_new or new[-1:] == [stop])):
            tally.violation("generated tokens break the rules", what, repr(new))
            continue
        if t == 0:      # greedy: each token is the argmax after the ones before it
            seq = list(prompt)
            for x in new:
                if x != int(np.argmax(gpt2_logits(weights, seq)[-1])):
                    tally.violation("greedy decoding is not the argmax of the logits", what, repr(new))
                    break
                seq.append(x)
        elif seed is not None and rng.random() < 0.5:
            again = tally.record(db.run(sql, args), what)
            if again.ok and again.value != new:
                tally.violation("the same seed gave other tokens", what, f"{new} then {again.value}")
    tally.finish(db)


def export_errors(fn: str, target: str) -> set:
    """What writing a model to `target` must fail with, from the state of the file system;
    empty if it must work.  llm_export_hf writes <target>/model.safetensors and config.json."""
    import os
    if not target.startswith("/"):
        return {"42602"}
    path = os.path.join(target, "model.safetensors") if "export_hf" in fn else target
    parent = os.path.dirname(path)
    if os.path.isdir(path):
        return {"42809", "58000"}                    # a directory where the file goes
    if not os.path.isdir(parent):
        if os.path.exists(parent):
            return {"42809"}                         # a file where a directory goes
        if not os.path.isdir(os.path.dirname(parent)):
            return {"58P01", "42809", "42501"}       # only the last directory is created
        if parent.startswith("/proc"):
            return {"58P01", "42501"}
    return set()


def test_model_functions(db, weights, server_dir):
    """llm_embedding_row, llm_init, llm_param_shapes, llm_hf_config, llm_check_complete,
    llm_register_hf_config, exports and the cache functions, with odd arguments."""
    tally = Tally("gpt2: model, config and export functions")
    for rng in cases(300, seed=23):
        model, bad_model = model_name(rng)
        kind = rng.choice(["row", "shapes", "config", "complete", "register", "export", "cache", "init"])
        if kind == "row":
            token = rng.choice([rng.randrange(V)] * 3 + EDGE_INTS + [V])
            what = ("llm_embedding_row", model, token)
            out = tally.record(db.run("SELECT llm_embedding_row(%s, %s)", [model, token]), what)
            if bad_model:
                if tally.expect_ok(what, out) and out.value is not None:
                    tally.violation("an unknown model has an embedding row", what, repr(out.rows))
            elif not 0 <= token < V:
                tally.expect_error(what, out, {"2202E", "22023", "22003"})
            elif tally.expect_ok(what, out):
                ok, why = close(out.value, weights["wte.weight"][token], 0, 0)
                if not ok:
                    tally.violation("llm_embedding_row is not the row of wte", what, why)
        elif kind in ("shapes", "config", "complete"):
            sql = {"shapes": "SELECT count(*) FROM llm_param_shapes(%s)", "config": "SELECT llm_hf_config(%s)",
                   "complete": "SELECT llm_check_complete(%s)"}[kind]
            out = tally.record(db.run(sql, [model]), (sql, model))
            if bad_model and kind == "shapes":      # an unknown model has no parameters
                if tally.expect_ok((sql, model), out) and out.value != 0:
                    tally.violation("an unknown model has parameter shapes", model, repr(out.rows))
            elif bad_model:
                tally.expect_error((sql, model), out, {"42704"})
            elif kind == "config" and tally.expect_ok((sql, model), out):
                cfg = out.value
                if any(cfg[k] != CONFIG[k] for k in CONFIG):
                    tally.violation("llm_hf_config does not give the model's settings", model, repr(cfg))
            else:
                tally.expect_ok((sql, model), out)
        elif kind == "register":
            cfg = dict(CONFIG, **{rng.choice(list(CONFIG)): rng.choice([0, 1, 3, 8, 16, -1, "x", None, 2**40])})
            name = rng.choice([MODEL, "fuzz_reg"])
            what = ("llm_register_hf_config", name, cfg)
            out = tally.record(db.run("SELECT llm_register_hf_config(%s, %s::jsonb)", [name, json.dumps(cfg)]),
                               what)
            if not out.ok:
                tally.expect_error(what, out, {"22023", "23514"})
            elif name == MODEL and any(cfg[k] != CONFIG[k] for k in CONFIG if cfg[k] is not None):
                tally.violation("registered over a model with other settings", what, "")
            db.run("DELETE FROM llm_model_config WHERE model = 'fuzz_reg'")
        elif kind == "export":
            target = rng.choice([server_dir / "out" / "m.safetensors", server_dir / "a" / "b" / "c.st",
                                 "relative.safetensors", server_dir, "/proc/nope/x.st", server_dir / "\u00e9.st",
                                 server_dir / "\u00e9.st" / "below"])
            fn = rng.choice(["pg_llm_export_safetensors(%s, %s)", "llm_export_hf(%s, %s)",
                             "llm_write_safetensors(%s, %s)"])
            args = [str(target), model] if fn.startswith("llm_write") else [model, str(target)]
            errors = export_errors(fn, str(target)) | (bad_model or set())
            out = tally.record(db.run("SELECT " + fn, args), (fn, args))
            if errors:
                tally.expect_error((fn, args), out, errors)
            else:
                tally.expect_ok((fn, args), out, "a writable target")
        elif kind == "cache":
            out = tally.record(db.run(rng.choice(["SELECT * FROM llm_model_cache()",
                                                  "SELECT llm_model_cache_clear()"])), kind)
            tally.expect_ok(kind, out)
        else:
            seed = rng.choice([0, 1, -1, INT32_MAX, -2**31, None])
            name = rng.choice(["nope", "fuzz_gpt_copy"])
            what = ("llm_init", name, seed)
            out = tally.record(db.run("SELECT llm_init(%s, %s)", [name, seed]), what)
            tally.expect_error(what, out, {"42704", "22004"} if seed is None else {"42704"})
    # no temporary files left behind by failed exports
    left = [p.name for p in server_dir.rglob("*.tmp*")]
    if left:
        tally.violation("an export left temporary files", left, "")
    tally.finish(db)
