"""GPT-2 inside PostgreSQL against HuggingFace's GPT2LMHeadModel.

Random-init HF models (no downloads) are copied into llm_model_config and
llm_param, then llm_logits, llm_loss and llm_generate_tokens are compared
with what HF computes from the very same weights.  Also: sampling, the
weight cache (never stale), llm_init, and the errors bad input gets.
"""
import numpy as np
import psycopg
import pytest

import pg_llm_lab

torch = pytest.importorskip("torch", reason="the parity tests compare with PyTorch")
transformers = pytest.importorskip("transformers", reason="the parity tests compare with HF GPT-2")
from transformers.generation.logits_process import (  # noqa: E402
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from hf_checkpoints import make_hf_model  # noqa: E402

CONFIGS = {
    "t_tiny": dict(n_layer=3, n_head=3, n_embd=96, vocab_size=1000, n_positions=64),
    # head size 17, odd MLP width, another eps
    "t_odd": dict(n_layer=2, n_head=2, n_embd=34, vocab_size=517, n_positions=40, n_inner=50,
                  layer_norm_epsilon=1e-3),
    "t_one": dict(n_layer=1, n_head=1, n_embd=8, vocab_size=11, n_positions=16),  # the smallest
}
# The real GPT-2 small shape (random weights): 124M parameters, ~500 MB.
SMALL = ("t_gpt2_small", dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024))


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def load_into_db(conn, model_name, model):
    """Register `model` as `model_name` and copy its weights into llm_param."""
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", (model_name,))
    pg_llm_lab.import_hf(conn, model, model_name, progress=False)


@pytest.fixture(scope="module")
def models(db_url):
    """The small test models, loaded once per module: name -> HF model."""
    out = {}
    with pg_llm_lab.connect(db_url) as conn:
        for name, config in CONFIGS.items():
            out[name] = make_hf_model(seed=len(out), **config)
            load_into_db(conn, name, out[name])
        out["t_sharp"] = make_hf_model(seed=7, scale=4.0, **CONFIGS["t_tiny"])
        load_into_db(conn, "t_sharp", out["t_sharp"])
    return out


def hf_logits(model, tokens):
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0].numpy()


def assert_logits_close(got, want):
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= 1e-4 * np.abs(want).max(), f"max abs error {err}, max |logit| {np.abs(want).max()}"


def random_tokens(vocab, n, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


# ---- logits and loss ----------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_hf(conn, models, name):
    model = models[name]
    for n in (1, 5, model.config.n_positions):
        tokens = random_tokens(model.config.vocab_size, n, seed=n)
        assert_logits_close(q(conn, "SELECT llm_logits(%s, %s)", name, tokens), hf_logits(model, tokens))


def test_last_only_is_the_last_row(conn, models):
    tokens = random_tokens(1000, 20)
    full = q(conn, "SELECT llm_logits('t_tiny', %s)", tokens)
    last = q(conn, "SELECT llm_logits('t_tiny', %s, true)", tokens)
    assert last.shape == (1, 1000)
    np.testing.assert_allclose(last[0], full[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["t_tiny", "t_odd"])
def test_loss_matches_hf(conn, models, name):
    model = models[name]
    tokens = random_tokens(model.config.vocab_size, 30, seed=3)
    with torch.inference_mode():
        want = model(torch.tensor([tokens]), labels=torch.tensor([tokens])).loss.item()
    # HF shifts labels internally; our targets are explicit and aligned.
    got = q(conn, "SELECT llm_loss(%s, %s, %s)", name, tokens, tokens[1:] + [-100])
    assert abs(got - want) <= 1e-4 * abs(want)


def test_loss_ignores_minus_100(conn, models):
    tokens = random_tokens(1000, 12, seed=4)
    targets = [-100 if i % 3 else t for i, t in enumerate(tokens[1:] + [5])]
    logits = hf_logits(models["t_tiny"], tokens).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    want = -np.mean([logp[i, t] for i, t in enumerate(targets) if t != -100])
    got = q(conn, "SELECT llm_loss('t_tiny', %s, %s)", tokens, targets)
    assert abs(got - want) <= 1e-4 * abs(want)


@pytest.mark.slow
def test_gpt2_small_shape(conn, db_url):
    """The full GPT-2 small shape: logits, loss and greedy decoding against HF."""
    name, config = SMALL
    model = make_hf_model(seed=11, **config)
    load_into_db(conn, name, model)
    try:
        tokens = random_tokens(50257, 64, seed=5)
        assert_logits_close(q(conn, "SELECT llm_logits(%s, %s)", name, tokens), hf_logits(model, tokens))
        with torch.inference_mode():
            want = model(torch.tensor([tokens]), labels=torch.tensor([tokens])).loss.item()
        got = q(conn, "SELECT llm_loss(%s, %s, %s)", name, tokens, tokens[1:] + [-100])
        assert abs(got - want) <= 1e-4 * abs(want)
        check_greedy(conn, name, model, tokens[:16], 8)
        check_cancel(conn, name)
        assert_logits_close(q(conn, "SELECT llm_logits(%s, %s)", name, tokens), hf_logits(model, tokens))
    finally:
        conn.execute("DELETE FROM llm_model_config WHERE model = %s", (name,))
        conn.execute("SELECT llm_model_cache_clear()")


def check_cancel(conn, name):
    """A cancel (here: statement_timeout) stops generation and loading
    cleanly: an error, then the connection and the cache work as before."""
    [(version, nbytes, pins, loaded_at)] = cached(conn, name)
    conn.execute("SET statement_timeout = '300ms'")
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT llm_generate_tokens(%s, ARRAY[1, 2, 3], 1000, 0)", (name,))
        # the weights stay cached, and the cancelled call's pin is gone
        assert cached(conn, name) == [(version, nbytes, 0, loaded_at)]

        conn.execute("SELECT llm_model_cache_clear()")
        conn.execute("SET statement_timeout = '50ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT llm_logits(%s, ARRAY[1], true)", (name,))
        assert cached(conn, name) == []  # nothing half-loaded is kept
    finally:
        conn.execute("RESET statement_timeout")


# ---- generation --------------------------------------------------------------

def check_greedy(conn, name, model, prompt, n_new):
    """Greedy tokens equal HF's generate(do_sample=False) token for token,
    except where HF's own top-2 logits are too close to call."""
    got = q(conn, "SELECT llm_generate_tokens(%s, %s, %s, 0)", name, prompt, n_new)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                             output_scores=True, return_dict_in_generate=True)
    want = out.sequences[0, len(prompt):].tolist()
    assert len(got) == n_new
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            top2 = torch.topk(out.scores[i][0], 2).values
            assert (top2[0] - top2[1]).item() < 1e-3, f"token {i}: got {g}, HF {w}"
            break  # after an honest near-tie the two continuations differ


def test_greedy_matches_hf(conn, models):
    for seed in range(3):
        check_greedy(conn, "t_sharp", models["t_sharp"], random_tokens(1000, 5, seed=seed), 40)
    check_greedy(conn, "t_odd", models["t_odd"], random_tokens(517, 3, seed=9), 37)


def test_generate_returns_only_new_tokens(conn, models):
    assert q(conn, "SELECT llm_generate_tokens('t_tiny', ARRAY[1,2,3], 0)") == []
    assert len(q(conn, "SELECT llm_generate_tokens('t_tiny', ARRAY[1,2,3], 7, seed => 1)")) == 7
    # the whole context: prompt + new = n_positions
    assert len(q(conn, "SELECT llm_generate_tokens('t_tiny', ARRAY[1,2,3], 61, 0)")) == 61


def test_stop_token(conn, models):
    greedy = q(conn, "SELECT llm_generate_tokens('t_sharp', ARRAY[1,2,3], 20, 0)")
    stop = greedy[4]
    got = q(conn, "SELECT llm_generate_tokens('t_sharp', ARRAY[1,2,3], 20, 0, stop_token => %s)", stop)
    assert got == greedy[:greedy.index(stop) + 1]


def test_sampling_is_reproducible(conn, models):
    sql = "SELECT llm_generate_tokens('t_tiny', ARRAY[1,2,3], 30, 1.0, 0, 1.0, %s)"
    a, b, c = q(conn, sql, 42), q(conn, sql, 42), q(conn, sql, 43)
    assert a == b
    assert a != c
    # NULL seed: random, so two calls (almost surely) differ
    sql = "SELECT llm_generate_tokens('t_tiny', ARRAY[1,2,3], 30, 1.0)"
    assert q(conn, sql) != q(conn, sql)


def test_filters_that_leave_one_token_are_greedy(conn, models):
    greedy = q(conn, "SELECT llm_generate_tokens('t_tiny', ARRAY[4,5,6], 25, 0)")
    assert q(conn, "SELECT llm_generate_tokens('t_tiny', ARRAY[4,5,6], 25, 1.5, 1, 1.0, 7)") == greedy
    assert q(conn, "SELECT llm_generate_tokens('t_tiny', ARRAY[4,5,6], 25, 1.0, 0, 1e-6, 7)") == greedy


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 5, 1.0), (0.25, 0, 0.7), (0.5, 0, 0.3),
                                                     (2.0, 20, 0.5)])
def test_sampling_distribution(conn, models, temperature, top_k, top_p):
    """Many one-token draws follow HF's warped distribution (temperature,
    then top-k, then top-p).  The settings leave 4 to 20 tokens, so that
    4000 draws estimate the distribution to a few percent."""
    prompt = [7, 8, 9]
    n = 4000
    draws = conn.execute(
        "SELECT (llm_generate_tokens('t_sharp', %s, 1, %s, %s, %s, s))[1]"
        " FROM generate_series(1, %s) s", (prompt, temperature, top_k, top_p, n)).fetchall()
    counts = np.bincount([d[0] for d in draws], minlength=1000) / n

    scores = torch.from_numpy(hf_logits(models["t_sharp"], prompt)[-1:].copy())
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    scores = TopPLogitsWarper(top_p)(None, scores)
    want = torch.softmax(scores, -1)[0].numpy()
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(want)), "drew a filtered-out token"
    assert 0.5 * np.abs(counts - want).sum() < 0.05  # total variation distance


# ---- determinism across thread counts ---------------------------------------

def test_bit_identical_at_any_thread_count(conn, models):
    tokens = random_tokens(1000, 64, seed=8)
    results = []
    for threads in (1, 2):
        conn.execute("SELECT set_config('pg_llm.threads', %s, false)", (str(threads),))
        results.append((
            q(conn, "SELECT llm_logits('t_tiny', %s)", tokens),
            q(conn, "SELECT llm_loss('t_tiny', %s, %s)", tokens, tokens[1:] + [-100]),
            q(conn, "SELECT llm_generate_tokens('t_tiny', %s, 20, 0.8, 50, 0.9, 5)", tokens[:10]),
        ))
    conn.execute("RESET pg_llm.threads")
    (l1, s1, g1), (l2, s2, g2) = results
    assert np.array_equal(l1, l2) and s1 == s2 and g1 == g2


# ---- the weight cache ------------------------------------------------------------

def cached(conn, model):
    """The weight cache's versions of `model`: (version, bytes, pins, loaded_at) each."""
    return conn.execute("SELECT version, bytes, pins, loaded_at FROM llm_model_cache()"
                        " WHERE model = %s ORDER BY version", (model,)).fetchall()


def test_cache_is_reused_and_never_stale(conn, models):
    tokens = [1, 2, 3, 4]
    before = q(conn, "SELECT llm_logits('t_tiny', %s)", tokens)
    [(version, nbytes, pins, loaded_at)] = cached(conn, "t_tiny")
    n_params = sum(p.numel() for p in models["t_tiny"].parameters())  # wte counted once (tied)
    assert pins == 0 and 4 * n_params <= nbytes < 4 * n_params + 64 * 100
    q(conn, "SELECT llm_logits('t_tiny', %s)", tokens)
    assert cached(conn, "t_tiny") == [(version, nbytes, 0, loaded_at)], \
        "a second call must not decode the weights again"

    try:
        # A learner's manual UPDATE bumps the version: the next call decodes
        # the new one, and the old one, unused, is freed.
        conn.execute("UPDATE llm_param SET data = llm_fill(ARRAY[96], 0.5)"
                     " WHERE model = 't_tiny' AND name = 'ln_f.bias'")
        after = q(conn, "SELECT llm_logits('t_tiny', %s)", tokens)
        assert not np.allclose(after, before)
        [(new_version, _, _, _)] = cached(conn, "t_tiny")
        assert new_version > version

        # Inside a transaction that rolls back, the change is seen, then
        # gone; the uncommitted version is never stored for others.
        with pytest.raises(RuntimeError):
            with conn.transaction():
                conn.execute("UPDATE llm_param SET data = llm_fill(ARRAY[96], -0.5)"
                             " WHERE model = 't_tiny' AND name = 'ln_f.bias'")
                inside = q(conn, "SELECT llm_logits('t_tiny', %s)", tokens)
                assert not np.allclose(inside, after)
                assert [v for v, *_ in cached(conn, "t_tiny")] == [new_version]
                raise RuntimeError("roll back")
        np.testing.assert_array_equal(q(conn, "SELECT llm_logits('t_tiny', %s)", tokens), after)
    finally:
        load_into_db(conn, "t_tiny", models["t_tiny"])
    np.testing.assert_array_equal(q(conn, "SELECT llm_logits('t_tiny', %s)", tokens), before)


def test_cache_respects_other_sessions_snapshots(conn, db_url, models):
    """Another session's uncommitted change is invisible; once committed, it is used."""
    tokens = [5, 6, 7]
    before = q(conn, "SELECT llm_logits('t_one', %s)", tokens)
    with pg_llm_lab.connect(db_url, autocommit=False) as other:
        other.execute("UPDATE llm_param SET data = llm_fill(ARRAY[8], 1.0)"
                      " WHERE model = 't_one' AND name = 'ln_f.bias'")
        np.testing.assert_array_equal(q(conn, "SELECT llm_logits('t_one', %s)", tokens), before)
        other.commit()
    try:
        assert not np.allclose(q(conn, "SELECT llm_logits('t_one', %s)", tokens), before)
    finally:
        load_into_db(conn, "t_one", models["t_one"])


def test_missing_parameters_are_named(conn):
    conn.execute("DELETE FROM llm_model_config WHERE model = 't_partial'")
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                 " VALUES ('t_partial', 1, 1, 4, 8, 10)")
    conn.execute("INSERT INTO llm_param (model, name, data) VALUES ('t_partial', 'wte.weight', %b)",
                 (np.zeros((10, 4), np.float32),))
    with pytest.raises(psycopg.errors.DataException, match=r"missing 15 parameter\(s\): wpe.weight"):
        conn.execute("SELECT llm_logits('t_partial', ARRAY[1])")
    conn.execute("DELETE FROM llm_model_config WHERE model = 't_partial'")


# ---- llm_init, llm_randn, llm_fill --------------------------------------------

def test_randn_and_fill(conn):
    a = q(conn, "SELECT llm_randn(ARRAY[1001, 999], 2.0, 5)")
    assert a.shape == (1001, 999)
    assert abs(a.mean()) < 0.01 and abs(a.std() - 2.0) < 0.01
    np.testing.assert_array_equal(a, q(conn, "SELECT llm_randn(ARRAY[1001, 999], 2.0, 5)"))
    assert not np.array_equal(a, q(conn, "SELECT llm_randn(ARRAY[1001, 999], 2.0, 6)"))
    np.testing.assert_array_equal(q(conn, "SELECT llm_fill(ARRAY[2, 3], 1.5)"), np.full((2, 3), 1.5))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="std"):
        conn.execute("SELECT llm_randn(ARRAY[2], -1, 0)")


def test_init_is_reproducible_with_gpt2_statistics(conn):
    conn.execute("DELETE FROM llm_model_config WHERE model = 't_init'")
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                 " VALUES ('t_init', 4, 4, 128, 256, 3000)")

    def params():
        rows = conn.execute("SELECT name, data FROM llm_param WHERE model = 't_init'").fetchall()
        return dict(rows)

    conn.execute("SELECT llm_init('t_init', 1)")
    first = params()
    conn.execute("SELECT llm_init('t_init', 1)")
    again = params()
    conn.execute("SELECT llm_init('t_init', 2)")
    other = params()

    expected = {name for (name,) in conn.execute("SELECT name FROM llm_param_shapes('t_init')")}
    assert set(first) == expected
    for name, value in first.items():
        np.testing.assert_array_equal(value, again[name])
        if name.endswith(".bias"):
            assert not value.any(), name
        elif ".ln_" in name or name.startswith("ln_f"):
            assert (value == 1).all(), name
        else:
            std = 0.02 / np.sqrt(2 * 4) if name.endswith("c_proj.weight") else 0.02
            assert abs(value.std() - std) < 0.05 * std, (name, value.std(), std)
            assert abs(value.mean()) < 0.05 * std, name
            assert not np.array_equal(value, other[name]), name
    # distinct tensors get distinct streams
    assert not np.array_equal(first["h.0.attn.c_attn.weight"], first["h.1.attn.c_attn.weight"])
    assert q(conn, "SELECT llm_generate_tokens('t_init', ARRAY[1,2], 5, 0)") is not None
    conn.execute("DELETE FROM llm_model_config WHERE model = 't_init'")


# ---- errors ---------------------------------------------------------------------

@pytest.mark.parametrize("sql,error,message", [
    ("SELECT llm_logits('no_such_model', ARRAY[1])", psycopg.errors.UndefinedObject, "unknown model"),
    ("SELECT llm_generate_tokens('no_such_model', ARRAY[1], 1)", psycopg.errors.UndefinedObject,
     "unknown model"),
    ("SELECT llm_init('no_such_model', 1)", psycopg.errors.UndefinedObject, "unknown model"),
    ("SELECT llm_logits('t_tiny', '{}')", psycopg.errors.InvalidParameterValue, "empty"),
    ("SELECT llm_logits('t_tiny', ARRAY[1, 1000])", psycopg.errors.InvalidParameterValue,
     "token id 1000 at position 2"),
    ("SELECT llm_logits('t_tiny', array_fill(1, ARRAY[65]))", psycopg.errors.InvalidParameterValue,
     "65 tokens"),
    ("SELECT llm_loss('t_tiny', ARRAY[1, 2], ARRAY[2])", psycopg.errors.InvalidParameterValue,
     "1 targets for 2 tokens"),
    ("SELECT llm_loss('t_tiny', ARRAY[1, 2], ARRAY[2, -5])", psycopg.errors.InvalidParameterValue,
     "target -5 at position 2"),
    ("SELECT llm_loss('t_tiny', ARRAY[1, 2], ARRAY[-100, -100])", psycopg.errors.InvalidParameterValue,
     "-100"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[1, 2], 63)", psycopg.errors.InvalidParameterValue,
     "2 tokens plus 63 new tokens"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[-1], 3)", psycopg.errors.InvalidParameterValue,
     "token id -1 at position 1"),
    ("SELECT llm_generate_tokens('t_tiny', '{}', 3)", psycopg.errors.InvalidParameterValue, "empty"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[[1, 2], [3, 4]], 3)", psycopg.errors.InvalidParameterValue,
     "one-dimensional"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[1, NULL], 3)", psycopg.errors.NullValueNotAllowed,
     "element 2 is NULL"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[1], -1)", psycopg.errors.InvalidParameterValue,
     "max_new_tokens must be >= 0, got -1"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[1], 3, -0.5)", psycopg.errors.InvalidParameterValue,
     "temperature .* got -0.5"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[1], 3, 'NaN')", psycopg.errors.InvalidParameterValue,
     "(?i)temperature .* got nan"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[1], 3, 1, -2)", psycopg.errors.InvalidParameterValue,
     "top_k must be >= 0, got -2"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[1], 3, 1, 0, 0)", psycopg.errors.InvalidParameterValue,
     r"top_p must be in \(0, 1\], got 0"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[1], 3, 1, 0, 1.5)", psycopg.errors.InvalidParameterValue,
     "got 1.5"),
    ("SELECT llm_generate_tokens('t_tiny', ARRAY[1], 3, stop_token => 1000)",
     psycopg.errors.InvalidParameterValue, "stop_token 1000"),
])
def test_bad_input(conn, models, sql, error, message):
    with pytest.raises(error, match=message):
        conn.execute(sql)


def test_nan_weights_are_an_error_not_a_token(conn, models):
    conn.execute("UPDATE llm_param SET data = '[NaN,0,0,0,0,0,0,0]'::tensor"
                 " WHERE model = 't_one' AND name = 'ln_f.bias'")
    try:
        with pytest.raises(psycopg.errors.FloatingPointException, match="non-finite"):
            conn.execute("SELECT llm_generate_tokens('t_one', ARRAY[1], 3)")
    finally:
        load_into_db(conn, "t_one", models["t_one"])
