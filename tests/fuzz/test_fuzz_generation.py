"""Fuzz generation: llm_sampling_probs on logits with NaN, infinities, ties and
huge values and settings from NaN to denormal; the streams, beam search and
the text functions on a tiny model with a tokenizer trained in SQL, with
prompts empty, too long, odd Unicode, stop strings and ids of every kind,
unknown models, an empty default model.

Oracles: the distribution of a float32 numpy transcription of HF's logits
processors; a stream is its generation row by row; a seed repeats; beams are
ranked, in the vocabulary, and one beam is greedy decoding; text never holds
a stop string; every refusal has the SQLSTATE the input calls for.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from fuzz_harness import FuzzDB, Tally, close
from generators import EDGE_FLOATS, EDGE_INTS, INT32_MAX, cases, int_array_literal

MODEL = "fuzz_gen"
V, T_MAX = 261, 12        # 256 bytes + 4 merges + <|endoftext|>; a short context
CORPUS = ["aaa bbb aaa bbb", "caf\u00e9 caf\u00e9", "\U0001F418\U0001F418 ab"]

COVERS = {"llm_sampling_probs", "llm_generate_stream_tokens", "llm_beam_search_tokens", "llm_generate",
          "llm_generate_stream", "llm_beam_search", "llm_default_model"}

TEMPERATURES = [1.0, 0.7, 0.0, 2.5, -0.0, -1.0, math.nan, math.inf, 1e300, 1e-300, 5e-324, 1e-30, None]
TOP_KS = [0, 1, 3, 50, V, V + 1, -1, INT32_MAX, -2**31, None]
TOP_PS = [1.0, 0.9, 0.5, 1e-300, 0.0, -0.1, 1.0000001, math.nan, math.inf, None]
PENALTIES = [1.0, 1.3, 0.5, 0.0, -1.0, math.nan, math.inf, 1e300, 1e-300, None]


@pytest.fixture(scope="module")
def model(db_url):
    """fuzz_gen: a tokenizer of V tokens trained in SQL and a GPT-2 of its vocabulary size."""
    db = FuzzDB(db_url)
    db.run("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    assert db.run("SELECT llm_bpe_train(%s, %s::text[], %s)", [MODEL, CORPUS, V]).ok
    assert db.run("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                  " VALUES (%s, 1, 2, 8, %s, %s)", [MODEL, T_MAX, V]).ok
    assert db.run("SELECT llm_init(%s, 5)", [MODEL]).ok
    eot = db.run("SELECT eot_id FROM llm_tokenizer_info(%s)", [MODEL]).value
    yield eot
    db.run("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    db.run("DELETE FROM llm_tokenizer WHERE model = %s", [MODEL])
    db.close()


def pick(rng, pool, common=4):
    return rng.choice(pool[:common]) if rng.random() < 0.8 else rng.choice(pool)


def sampling_errors(temperature, top_k, top_p, penalty) -> set:
    """The SQLSTATEs bad sampling settings call for (empty: fine)."""
    t = 1.0 if temperature is None else temperature
    p = 1.0 if top_p is None else top_p
    r = 1.0 if penalty is None else penalty
    errors = set()
    if not (t >= 0 and math.isfinite(t)) or (top_k is not None and top_k < 0) or not (0 < p <= 1) \
            or not (r > 0 and math.isfinite(r)):
        errors.add("22023")
    elif np.float32(r) == 0 or np.isinf(np.float32(r)):
        errors.add("22003")
    return errors


# ---- llm_sampling_probs ---------------------------------------------------------------

def reference_probs(logits, t, k, p, r, previous):
    """HF's processors in float32 (penalty, temperature, top-k, top-p), then
    softmax in float64; the lower id first among equal logits at the top-p
    boundary.  Returns the probabilities, or a set of SQLSTATEs."""
    x = logits.astype(np.float32).copy()
    if np.isnan(x).any() or np.isposinf(x).any():
        return {"22P01"}
    if r != 1.0:
        for i in set(previous):
            x[i] = x[i] * np.float32(r) if x[i] < 0 else x[i] / np.float32(r)
    if np.isneginf(x).all():
        return {"22023"}
    out = np.zeros(len(x))
    if t == 0:
        out[int(np.argmax(x))] = 1
        return out
    divisor = 1.0
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        t32 = np.float32(t)
        if t32 != 0 and np.isfinite(t32) and np.isfinite(x.max() / t32):
            x = x / t32
        else:       # beyond float32: divide in float64 (the limits: greedy, uniform)
            divisor = t
    keep = np.ones(len(x), bool)
    if 0 < k < len(x):
        keep = x >= np.sort(x)[-k]
    w = np.where(keep, np.exp((x.astype(np.float64) - x.max()) / divisor), 0.0)
    if p < 1:
        order = sorted(np.flatnonzero(w), key=lambda i: (-w[i], i))
        before, bar, kept = 0.0, p * w.sum(), []
        for n, i in enumerate(order):
            if n > 0 and before >= bar:
                break
            kept.append(i)
            before += w[i]
        w = np.where(np.isin(np.arange(len(w)), kept), w, 0.0)
    return w / w.sum()


def logits_for(rng, n):
    kind = rng.choice(["normal", "normal", "ties", "edge", "flat", "one"])
    if kind == "normal":
        return np.array([rng.gauss(0, 3) for _ in range(n)], np.float32)
    if kind == "ties":
        return np.array([rng.randint(-3, 3) / 2 for _ in range(n)], np.float32)
    if kind == "flat":
        return np.zeros(n, np.float32)
    if kind == "one":
        x = np.full(n, -math.inf, np.float32)
        x[rng.randrange(n)] = rng.choice([0.0, 50.0, -50.0])
        return x
    return np.array([rng.choice(EDGE_FLOATS) if rng.random() < 0.3 else rng.gauss(0, 3) for _ in range(n)],
                    np.float32)


def test_sampling_probs(db):
    tally = Tally("generation: llm_sampling_probs")
    for rng in cases(500, seed=31):
        n = rng.choice([1, 2, 5, 17, 64, 300])
        rows = rng.choice([None, 1, 3])
        logits = np.stack([logits_for(rng, n) for _ in range(rows or 1)])
        t, k, p, r = (pick(rng, pool) for pool in (TEMPERATURES, TOP_KS, TOP_PS, PENALTIES))
        previous = [rng.randrange(n) for _ in range(rng.randint(0, 4))]
        if rng.random() < 0.1:
            previous.append(rng.choice([n, -1, None, INT32_MAX]))
        arg = logits[0] if rows is None else logits
        what = (arg.tolist(), t, k, p, r, previous)
        out = tally.record(db.run("SELECT llm_sampling_probs(%s, %s, %s, %s, %s, %s::int[])",
                                  [arg, t, k, p, r, int_array_literal(previous) if previous else None]), what)
        errors = sampling_errors(t, k, p, r)
        if not errors and any(i is None for i in previous):
            errors = {"22004"}
        elif not errors and any(not 0 <= i < n for i in previous):
            errors = {"22023"}
        t, k, p, r = (1.0 if t is None else t), (k or 0), (1.0 if p is None else p), (1.0 if r is None else r)
        wants = [] if errors else [reference_probs(row, t, k, p, r, previous) for row in logits]
        for want in wants:
            if isinstance(want, set):
                errors = want
                break
        if errors:
            tally.expect_error(what, out, errors)
            continue
        if not tally.expect_ok(what, out):
            continue
        got = np.atleast_2d(out.value)
        ok, why = close(got, np.stack(wants), 1e-5, 1e-7)
        if not ok:
            tally.violation("llm_sampling_probs is not HF's distribution", what, why)
    tally.finish(db)


# ---- token streams and beam search -------------------------------------------------------

def prompt_ids(rng):
    """(ids or None, int[] literal, SQLSTATEs if refused)."""
    kind = rng.choice(["good"] * 6 + ["empty", "long", "out", "null"])
    ids = [rng.randrange(V) for _ in range(rng.randint(1, 5))]
    if kind == "empty":
        return None, "{}", {"22023"}
    if kind == "long":
        return None, int_array_literal([1] * rng.randint(T_MAX + 1, 3 * T_MAX)), {"22023"}
    if kind == "out":
        ids[rng.randrange(len(ids))] = rng.choice(EDGE_INTS + [V])
        bad = any(not 0 <= i < V for i in ids)
        return (None if bad else ids), int_array_literal(ids), ({"22023"} if bad else None)
    if kind == "null":
        ids[0] = None
        return None, int_array_literal(ids), {"22004"}
    return ids, int_array_literal(ids), None


def stop_id_list(rng):
    """(stop ids or None, SQLSTATEs if refused)."""
    kind = rng.choice(["none", "none", "some", "empty", "bad", "null"])
    if kind == "none":
        return None, None
    if kind == "empty":
        return [], None
    ids = [rng.randrange(V) for _ in range(rng.randint(1, 3))]
    if kind == "bad":
        ids.append(rng.choice([V, -1, INT32_MAX]))
        return ids, {"22023"}
    if kind == "null":
        return ids + [None], {"22004"}
    return ids, None


def test_token_streams(db, model):
    tally = Tally("generation: llm_generate_stream_tokens")
    for rng in cases(200, seed=32):
        ids, lit, bad = prompt_ids(rng)
        n = rng.randint(1, T_MAX - len(ids or [])) if rng.random() < 0.8 and ids else \
            rng.choice([0, -1, 1, 3, T_MAX, INT32_MAX])
        t, k, p, r = (pick(rng, pool) for pool in (TEMPERATURES, TOP_KS, TOP_PS, PENALTIES))
        seed = rng.choice([0, 1, -1, 2**63 - 1, -2**63])
        stops, bad_stops = stop_id_list(rng)
        name = MODEL if rng.random() < 0.9 else rng.choice(["nope", "", "FUZZ_GEN"])
        args = [name, lit, n, t, k, p, seed, int_array_literal(stops) if stops is not None else None, r]
        what = tuple(args)
        out = tally.record(db.run("SELECT * FROM llm_generate_stream_tokens(%s, %s::int[], %s, %s, %s, %s,"
                                  " %s, %s::int[], %s)", args), what)
        errors = sampling_errors(t, k, p, r) | (bad or set()) | (bad_stops or set())
        if name != MODEL:
            errors.add("42704")
        if n < 1 or (ids is not None and len(ids) + n > T_MAX):
            errors.add("22023")
        if errors:
            tally.expect_error(what, out, errors)
            continue
        if not tally.expect_ok(what, out):
            continue
        rows = out.rows
        tokens = [row[1] for row in rows]
        again = tally.record(db.run("SELECT llm_generate_tokens(%s, %s::int[], %s, %s, %s, %s, %s, NULL,"
                                    " %s::int[], %s)", args), what)
        if not tally.expect_ok(what, again):
            continue
        if again.value != tokens:
            tally.violation("the stream is not its generation", what, f"{tokens} vs {again.value}")
        if [row[0] for row in rows] != list(range(1, len(rows) + 1)) or \
                [row[2] for row in rows] != [False] * (len(rows) - 1) + [True]:
            tally.violation("steps or is_complete out of order", what, repr(rows))
        ends = set(stops or [])
        if not (0 < len(tokens) <= n and all(0 <= x < V for x in tokens)
                and not ends & set(tokens[:-1]) and (len(tokens) == n or tokens[-1] in ends)):
            tally.violation("generated tokens break the rules", what, repr(tokens))
    tally.finish(db)


def test_beam_search_tokens(db, model):
    tally = Tally("generation: llm_beam_search_tokens")
    for rng in cases(150, seed=33):
        ids, lit, bad = prompt_ids(rng)
        width = rng.choice([1, 2, 3, 5]) if rng.random() < 0.85 else rng.choice([0, -1, 256, 257, INT32_MAX])
        n = rng.randint(1, T_MAX - len(ids or [])) if rng.random() < 0.85 and ids else \
            rng.choice([0, -1, 1, T_MAX, INT32_MAX])
        lp = pick(rng, [1.0, 0.0, 2.0, -1.0, math.nan, math.inf, -math.inf, 1e300, None])
        early = pick(rng, ["false", "true", "never", None, "TRUE", "maybe", ""], 4)
        stops, bad_stops = stop_id_list(rng)
        num_return = rng.choice([None, None, 1, 2, width, 0, min(width + 1, INT32_MAX), -1])
        r = pick(rng, PENALTIES)
        args = [MODEL, lit, width, n, lp, early, int_array_literal(stops) if stops is not None else None,
                num_return, r]
        what = tuple(args)
        out = tally.record(db.run("SELECT rank, score, tokens FROM llm_beam_search_tokens(%s, %s::int[], %s,"
                                  " %s, %s, %s, %s::int[], %s, %s)", args), what)
        errors = (bad or set()) | (bad_stops or set())
        if not 1 <= width <= 256 or n < 1 or (lp is not None and not math.isfinite(lp)) \
                or (early is not None and early.lower() not in ("false", "true", "never")) \
                or (num_return is not None and not 1 <= num_return <= width):
            errors.add("22023")
        errors |= sampling_errors(1.0, 0, 1.0, r)
        if ids is not None and len(ids) + n > T_MAX:
            errors.add("22023")
        if errors:
            tally.expect_error(what, out, errors)
            continue
        if not tally.expect_ok(what, out):
            continue
        rows = out.rows
        ends = set(stops or [])
        scores = [row[1] for row in rows]
        if not (0 < len(rows) <= (num_return or width) and [row[0] for row in rows] == list(range(1, len(rows) + 1))
                and all(a >= b for a, b in zip(scores, scores[1:]))):
            tally.violation("beams not ranked by score", what, repr(rows))
        for _, score, tokens in rows:
            if not (0 < len(tokens) <= n and all(0 <= x < V for x in tokens) and not ends & set(tokens[:-1])
                    and math.isfinite(score)):
                tally.violation("a beam breaks the rules", what, repr(rows))
        if width == 1 and (r is None or r == 1.0) and not stops:  # a stop id lets one beam outlast greedy
            greedy = db.run("SELECT llm_generate_tokens(%s, %s::int[], %s, 0, stop_ids => %s::int[])",
                            [MODEL, lit, n, args[6]])
            if greedy.ok and greedy.value != rows[0][2]:
                tally.violation("one beam is not greedy decoding", what, f"{rows[0][2]} vs {greedy.value}")
    tally.finish(db)


# ---- text in, text out ---------------------------------------------------------------------

def text_prompt(rng):
    return rng.choice(["aaa", "", "caf\u00e9 ", "\U0001F418", "b" * 40, "<|endoftext|>", "a\u0301\u200d x",
                       "\t\n ", "\ufffd\ufffd", "bbb aaa " * 5])


def stop_strings(rng):
    kind = rng.choice(["none", "none", "some", "empty", "null", "long"])
    if kind == "none":
        return None, None
    if kind == "empty":
        return [""], {"22023"}
    if kind == "null":
        return ["a", None], {"22004"}
    if kind == "long":
        return ["\U0001F418" * 30], None
    return [rng.choice(["a", "b", " ", "\u00e9", "aa", "\U0001F418", "\ufffd"]) for _ in range(rng.randint(1, 3))], None


def test_text_functions(db, model):
    tally = Tally("generation: llm_generate, llm_generate_stream, llm_beam_search")
    for rng in cases(200, seed=34):
        fn = rng.choice(["generate", "stream", "beam", "default"])
        prompt = text_prompt(rng)
        n = rng.randint(1, T_MAX - 1) if rng.random() < 0.85 else rng.choice([0, -1, T_MAX, T_MAX + 5, INT32_MAX])
        name = rng.choice([MODEL] * 6 + [None, "nope"])
        default = rng.choice([MODEL, MODEL, "", "nope"])
        db.run("SELECT set_config('pg_llm.default_model', %s, false)", [default])
        model_used = default if name is None else name
        errors = set()
        if model_used == "":
            errors.add("22023")
        elif model_used == "nope":
            errors.add("42704")
        if fn == "default":
            out = tally.record(db.run("SELECT llm_default_model()"), ("default", default))
            if default == "":
                tally.expect_error(("default", default), out, {"22023"})
            elif tally.expect_ok(("default", default), out) and out.value != default:
                tally.violation("llm_default_model is not the setting", default, out.value)
            continue
        if fn == "beam":
            width = rng.choice([1, 2, 3, 0])
            args = [prompt, width, n, name]
            what = ("llm_beam_search", *args)
            out = tally.record(db.run("SELECT rank, score, tokens, text FROM llm_beam_search(%s, %s, %s, %s)",
                                      args), what)
            if width < 1 or n < 1 or n >= T_MAX:
                errors.add("22023")
            if errors:
                tally.expect_error(what, out, errors)
            elif tally.expect_ok(what, out) and not (0 < len(out.rows) <= width and
                                                    all(isinstance(row[3], str) for row in out.rows)):
                tally.violation("llm_beam_search answers out of shape", what, repr(out.rows))
            continue
        t, k, p = (pick(rng, pool) for pool in (TEMPERATURES, TOP_KS, TOP_PS))
        seed = rng.choice([1, 2, -5])
        stops, bad_stops = stop_strings(rng)
        stop_ids, bad_ids = stop_id_list(rng)
        args = [prompt, n, t, k, p, name, seed, stops, int_array_literal(stop_ids) if stop_ids is not None else None]
        sql = "(%s, %s, %s, %s, %s, model => %s, seed => %s, stop => %s::text[], stop_ids => %s::int[])"
        what = ("llm_" + fn, *args)
        if fn == "generate":
            out = tally.record(db.run("SELECT llm_generate" + sql, args), what)
        else:
            out = tally.record(db.run("SELECT step, token_id, token, text, is_complete FROM llm_generate_stream"
                                      + sql, args), what)
        errors |= sampling_errors(t, k, p, 1.0) | (bad_stops or set()) | (bad_ids or set())
        if n < 1 or n >= T_MAX:
            errors.add("22023")
        if errors:
            tally.expect_error(what, out, errors)
            continue
        if not tally.expect_ok(what, out):
            continue
        if fn == "generate":
            text = out.value
            again = tally.record(db.run("SELECT llm_generate" + sql, args), what)
            if again.ok and again.value != text:
                tally.violation("the same seed gave another text", what, f"{text!r} then {again.value!r}")
        else:
            rows = out.rows
            text = rows[-1][3] if rows else ""
            if "".join(row[2] for row in rows) != text or not rows[-1][4] or any(row[4] for row in rows[:-1]):
                tally.violation("the stream's pieces do not add up", what, repr(rows))
            whole = tally.record(db.run("SELECT llm_generate" + sql, args), what)
            if whole.ok and whole.value != text:
                tally.violation("the stream is not llm_generate", what, f"{text!r} vs {whole.value!r}")
        if any(s in text for s in stops or []):
            tally.violation("a stop string is in the text", what, repr(text))
    db.run("RESET pg_llm.default_model")
    tally.finish(db)
