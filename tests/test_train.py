"""Training in the database: llm_dataset, llm_lr, llm_adamw_step (the training
state: load, clip, AdamW, one-statement write-back) against torch.optim.AdamW,
its logs, checkpoints, and what bad input, a concurrent writer, a cancel or a
killed backend leave behind (exactly the last committed write-back)."""
import threading
import time

import numpy as np
import psycopg
import pytest

import pg_llm_lab

torch = pytest.importorskip("torch", reason="the optimizer is compared with PyTorch")
pytest.importorskip("transformers", reason="the reference model is HF's GPT-2")

from hf_checkpoints import workdir  # noqa: E402,F401  (a folder the server may write)
from train_reference import (TINY, AdamWSettings, ReferenceTrainer, load_into_pg,  # noqa: E402
                             make_reference_model, nanogpt_lr)

f32 = np.float32


@pytest.fixture(autouse=True)
def drop_train_models(db_url):
    """After each test: no tr_* models, checkpoints or examples left."""
    yield
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(r"DELETE FROM llm_model_config WHERE model LIKE 'tr\_%'")
        c.execute(r"DELETE FROM llm_checkpoint WHERE model LIKE 'tr\_%'")
        c.execute("DELETE FROM llm_dataset WHERE split LIKE 'tr_%'")


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def column(conn, model, col="data"):
    """name -> the column's tensor (binary transfer: exact bits); None for NULL."""
    with conn.cursor(binary=True) as cur:
        cur.execute(f"SELECT name, {col} FROM llm_param WHERE model = %s", [model])
        return dict(cur.fetchall())


def fingerprint(conn, model):
    """Everything a write-back writes, as one comparable value."""
    return conn.execute("SELECT array_agg(row(name, md5(llm_bytea(data)), md5(llm_bytea(grad)), "
                        "md5(llm_bytea(m)), md5(llm_bytea(v)), step)::text ORDER BY name) "
                        "FROM llm_param WHERE model = %s", [model]).fetchone()[0]


def set_grads(conn, model, grads):
    with conn.transaction():
        for name, g in grads.items():
            conn.execute("UPDATE llm_param SET grad = %s WHERE model = %s AND name = %s",
                         [np.ascontiguousarray(g, f32), model, name])


def random_batch(vocab, seed, B=2, T=12):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (B, T))
    targets = np.roll(tokens, -1, axis=1)
    targets[:, -1] = -100
    return tokens, targets


def adamw_step(conn, model, s: AdamWSettings, lr):
    return q(conn, "SELECT llm_adamw_step(%s, %s, %s, %s, %s, %s, %s)", model, lr, s.weight_decay,
             s.betas[0], s.betas[1], s.eps, s.max_grad_norm)


def assert_params_close(got, want, start, what, per_tensor=False, lrs=()):
    """got vs torch's want: equal but for how torch's float32 kernels round each
    step's update (its sqrt, its division by the bias-correction scalar; their
    AVX2 and AVX-512 builds differ), an ulp or two of the update's size, which is
    at most about lr: lrs are the steps' learning rates.  per_tensor: relative to
    the longest way any weight of the tensor travelled (clipping coefficients an
    ulp apart shift every update, and more where m ~ 0)."""
    travelled = np.abs(want.astype(np.float64) - start.astype(np.float64))
    if per_tensor:
        travelled = travelled.max()
    tol = (4 * np.spacing(np.abs(want)).astype(np.float64) + 1e-5 * travelled
           + sum(4 * float(np.spacing(np.float32(lr))) for lr in lrs))
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(err <= tol), f"{what}: worst {(err / tol).max():.2f} x tolerance"


# ---- AdamW against torch ---------------------------------------------------------

def test_adamw_step_matches_torch_without_clipping(conn):
    """Three steps on torch's gradients: m and v bit-identical to torch's, the
    weights within torch's sqrt rounding, the step counter, the gradient kept."""
    model = make_reference_model(TINY, seed=0)
    load_into_pg(conn, model, "tr_adamw")
    start = column(conn, "tr_adamw")
    s = AdamWSettings(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), max_grad_norm=None,
                      warmup_steps=1, decay_steps=3)
    trainer = ReferenceTrainer(model, s)
    lrs = []
    for step in range(1, 4):
        r = trainer.step(*random_batch(TINY["vocab_size"], step), keep_grads=True)
        lrs.append(r.lr)
        set_grads(conn, "tr_adamw", r.grads)
        norm = adamw_step(conn, "tr_adamw", s, r.lr)
        assert norm == pytest.approx(r.grad_norm, rel=2e-6)

        data, m, v = (column(conn, "tr_adamw", c) for c in ("data", "m", "v"))
        for name, p in trainer.params.items():
            state = trainer.state(name)
            assert np.array_equal(m[name], state["exp_avg"].numpy()), f"m of {name} at step {step}"
            assert np.array_equal(v[name], state["exp_avg_sq"].numpy()), f"v of {name} at step {step}"
            assert_params_close(data[name], p.detach().numpy(), start[name], f"{name} at step {step}", lrs=lrs)
        grads = column(conn, "tr_adamw", "grad")
        assert all(np.array_equal(grads[n], r.grads[n]) for n in r.grads)  # not clipped: as set
        assert conn.execute("SELECT DISTINCT step FROM llm_param WHERE model = 'tr_adamw'").fetchall() == [(step,)]


def test_adamw_step_clips_as_torch(conn):
    model = make_reference_model(TINY, seed=1)
    load_into_pg(conn, model, "tr_clip")
    start = column(conn, "tr_clip")
    s = AdamWSettings(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.999), max_grad_norm=0.25)
    trainer = ReferenceTrainer(model, s)
    for step in range(1, 4):
        r = trainer.step(*random_batch(TINY["vocab_size"], 10 + step), keep_grads=True)
        assert r.grad_norm > s.max_grad_norm        # so clipping happens
        set_grads(conn, "tr_clip", r.grads)
        norm = adamw_step(conn, "tr_clip", s, r.lr)
        assert norm == pytest.approx(r.grad_norm, rel=2e-6)

        data, grads, m = (column(conn, "tr_clip", c) for c in ("data", "grad", "m"))
        for name, p in trainer.params.items():
            # the clipped gradient is written back, as torch leaves it in p.grad
            np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-5, atol=1e-12)
            # m = m + 0.1 (g - m) cancels where g ~ m: an error relative to the tensor's scale
            want_m = trainer.state(name)["exp_avg"].numpy()
            np.testing.assert_allclose(m[name], want_m, rtol=1e-5, atol=1e-6 * np.abs(want_m).max())
            assert_params_close(data[name], p.detach().numpy(), start[name], f"{name} at step {step}",
                                per_tensor=True)
    total = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in column(conn, "tr_clip", "grad").values()))
    assert total == pytest.approx(s.max_grad_norm, rel=1e-5)


def test_a_zero_step_writes_the_weights_back_bit_for_bit(conn):
    """lr 0: the weights go through the training state and the write-back unchanged."""
    load_into_pg(conn, make_reference_model(TINY, seed=2), "tr_zero")
    conn.execute("UPDATE llm_param SET grad = llm_randn(shape, 0.1, 7) WHERE model = 'tr_zero'")
    before, grads = column(conn, "tr_zero"), column(conn, "tr_zero", "grad")
    version = q(conn, "SELECT version FROM llm_model_config WHERE model = 'tr_zero'")
    q(conn, "SELECT llm_adamw_step('tr_zero', 0.0, weight_decay => 0.0)")
    after = column(conn, "tr_zero")
    assert all(before[n].tobytes() == after[n].tobytes() for n in before)
    assert all(grads[n].tobytes() == g.tobytes() for n, g in column(conn, "tr_zero", "grad").items())
    m = column(conn, "tr_zero", "m")
    assert all(np.array_equal(m[n], f32(1 - 0.9) * grads[n]) for n in m)   # m = lerp(0, g, 0.1)
    assert q(conn, "SELECT version FROM llm_model_config WHERE model = 'tr_zero'") > version
    assert q(conn, "SELECT min(step) = 1 AND max(step) = 1 FROM llm_param WHERE model = 'tr_zero'")


def test_steps_are_logged(conn):
    load_into_pg(conn, make_reference_model(TINY, seed=3), "tr_log")
    conn.execute("UPDATE llm_param SET grad = llm_randn(shape, 0.5, 1) WHERE model = 'tr_log'")
    grads, before = column(conn, "tr_log", "grad"), column(conn, "tr_log")
    norm = q(conn, "SELECT llm_adamw_step('tr_log', 1e-3, 0.05, 0.8, 0.99, 1e-7, 2.0)")
    after = column(conn, "tr_log")

    log = conn.execute("SELECT step, loss, lr, grad_norm, tokens_per_s, batch, weight_decay, beta1, beta2, "
                       "eps, clip FROM llm_train_log WHERE model = 'tr_log'").fetchall()
    assert log == [(1, None, 1e-3, norm, None, None, 0.05, 0.8, 0.99, 1e-7, 2.0)]
    total = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    assert norm == pytest.approx(total, rel=1e-6) and norm > 2.0

    stats = {r[0]: r[1:] for r in conn.execute(
        "SELECT name, step, grad_norm, data_norm, update_ratio FROM llm_grad_stats WHERE model = 'tr_log'")}
    assert set(stats) == set(grads)
    for name, (step, grad_norm, data_norm, ratio) in stats.items():
        a, b = after[name].astype(np.float64), before[name].astype(np.float64)
        assert step == 1
        assert grad_norm == pytest.approx(np.linalg.norm(grads[name].astype(np.float64)), rel=1e-6)
        assert data_norm == pytest.approx(np.linalg.norm(a), rel=1e-6)
        assert ratio == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(a), rel=1e-5)


BAD_STEPS = [
    ("SELECT llm_adamw_step('tr_bad', -1e-3)", "22023", "lr must be in [0, Infinity), not -0.001"),
    ("SELECT llm_adamw_step('tr_bad', 1e-3, beta1 => 1.0)", "22023", "beta1 must be in [0, 1), not 1"),
    ("SELECT llm_adamw_step('tr_bad', 1e-3, beta2 => 'NaN')", "22023", "beta2"),
    ("SELECT llm_adamw_step('tr_bad', 1e-3, eps => -1)", "22023", "eps"),
    ("SELECT llm_adamw_step('tr_bad', 1e-3, weight_decay => -0.1)", "22023", "weight_decay"),
    ("SELECT llm_adamw_step('tr_bad', 1e-3, max_grad_norm => 0)", "22023", "max_grad_norm must be positive"),
    ("SELECT llm_adamw_step('tr_bad', NULL)", "22004", "only max_grad_norm may be NULL"),
    ("SELECT llm_adamw_step('tr_nope', 1e-3)", "42704", 'unknown model "tr_nope"'),
]


@pytest.mark.parametrize("sql,sqlstate,message", BAD_STEPS)
def test_a_bad_step_is_an_error_that_writes_nothing(conn, sql, sqlstate, message):
    load_into_pg(conn, make_reference_model(TINY, seed=4), "tr_bad")
    conn.execute("UPDATE llm_param SET grad = llm_randn(shape, 0.1, 1) WHERE model = 'tr_bad'")
    before = fingerprint(conn, "tr_bad")
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    assert info.value.sqlstate == sqlstate and message in str(info.value)
    assert fingerprint(conn, "tr_bad") == before
    assert q(conn, "SELECT count(*) FROM llm_train_log WHERE model = 'tr_bad'") == 0


def test_state_errors_name_the_problem(conn):
    load_into_pg(conn, make_reference_model(TINY, seed=5), "tr_state")
    with pytest.raises(psycopg.Error) as info:                  # no gradients yet
        conn.execute("SELECT llm_adamw_step('tr_state', 1e-3)")
    assert info.value.sqlstate == "22004" and "has no gradient (llm_param.grad is NULL)" in str(info.value)

    conn.execute("UPDATE llm_param SET grad = llm_randn(shape, 0.1, 1) WHERE model = 'tr_state'")
    conn.execute("UPDATE llm_param SET step = 3 WHERE model = 'tr_state' AND name = 'wte.weight'")
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT llm_adamw_step('tr_state', 1e-3)")
    assert info.value.sqlstate == "22000" and "disagree on the step" in str(info.value)

    conn.execute("UPDATE llm_param SET step = 0 WHERE model = 'tr_state'")
    conn.execute("DELETE FROM llm_param WHERE model = 'tr_state' AND name = 'ln_f.bias'")
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT llm_adamw_step('tr_state', 1e-3)")
    assert info.value.sqlstate == "22000" and 'missing parameter "ln_f.bias"' in str(info.value)


def test_the_write_back_function_is_not_for_hands(conn):
    load_into_pg(conn, make_reference_model(TINY, seed=6), "tr_hands")
    with pytest.raises(psycopg.Error) as info:
        conn.execute("UPDATE llm_param SET data = llm_train_state_tensor(model, name, 'data') "
                      "WHERE model = 'tr_hands'")
    assert info.value.sqlstate == "55000" and "is being written back" in str(info.value)


# ---- concurrency, cancel, a killed backend ----------------------------------------

def backend_waits_for_lock(conn, pid):
    return q(conn, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", pid)


def test_a_write_back_over_a_concurrent_change_is_refused(db_url, conn):
    """A step that read the weights before another session committed new ones
    must not overwrite them: 40001, and llm_param keeps the other session's write."""
    load_into_pg(conn, make_reference_model(TINY, seed=7), "tr_race")
    conn.execute("UPDATE llm_param SET grad = llm_randn(shape, 0.1, 1) WHERE model = 'tr_race'")
    with pg_llm_lab.connect(db_url) as stepper, pg_llm_lab.connect(db_url, autocommit=False) as writer:
        writer.execute("UPDATE llm_param SET data = llm_scale(data, 2) WHERE model = 'tr_race' "
                       "AND name = 'ln_f.weight'")            # uncommitted; holds the model's version
        errors = []

        def step():
            try:
                stepper.execute("SELECT llm_adamw_step('tr_race', 1e-3)")
            except psycopg.Error as e:
                errors.append(e)

        pid = stepper.info.backend_pid
        thread = threading.Thread(target=step)
        thread.start()
        for _ in range(200):                                  # the step's write-back waits for the writer
            if backend_waits_for_lock(conn, pid):
                break
            time.sleep(0.05)
        assert backend_waits_for_lock(conn, pid)
        written = fingerprint(writer, "tr_race")
        writer.commit()
        thread.join(30)
    assert len(errors) == 1 and errors[0].sqlstate == "40001"
    assert "changed while it trained; nothing was written" in str(errors[0])
    assert fingerprint(conn, "tr_race") == written
    assert q(conn, "SELECT count(*) FROM llm_train_log WHERE model = 'tr_race'") == 0


@pytest.fixture
def lab_model(conn):
    """The issue's lab model (7M parameters): a step takes long enough to interrupt.
    Returns the seconds its first llm_adamw_step took."""
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES ('tr_lab', 4, 4, 128, 128, 50257)")
    conn.execute("SELECT llm_init('tr_lab', 1)")
    conn.execute("UPDATE llm_param SET grad = llm_randn(shape, 0.01, 2) WHERE model = 'tr_lab'")
    start = time.perf_counter()
    q(conn, "SELECT llm_adamw_step('tr_lab', 1e-3)")          # m, v and step hold values
    return time.perf_counter() - start


@pytest.mark.parametrize("fraction", [0.05, 0.4, 0.8])      # in the load, the update, the write-back
def test_a_cancelled_step_leaves_the_last_write_back(conn, lab_model, fraction):
    """Cancelled (statement_timeout) part-way through, a step changes nothing.
    The timeout is a fraction of the time a step took; should this step run
    faster and finish first, it is a complete step: try again sooner."""
    timeout_s = fraction * lab_model
    for _ in range(6):
        before = fingerprint(conn, "tr_lab")
        logged = q(conn, "SELECT count(*) FROM llm_train_log WHERE model = 'tr_lab'")
        conn.execute(f"SET statement_timeout = '{max(1, int(timeout_s * 1000))}ms'")
        try:
            conn.execute("SELECT llm_adamw_step('tr_lab', 1e-3)")
        except psycopg.errors.QueryCanceled:
            conn.execute("RESET statement_timeout")
            assert fingerprint(conn, "tr_lab") == before
            assert q(conn, "SELECT count(*) FROM llm_train_log WHERE model = 'tr_lab'") == logged
            return
        conn.execute("RESET statement_timeout")
        timeout_s /= 2
    pytest.fail(f"no step was cancelled, down to a timeout of {timeout_s:.3f} s")


def test_a_killed_backend_leaves_the_last_write_back(db_url, conn, lab_model):
    before = fingerprint(conn, "tr_lab")
    victim = pg_llm_lab.connect(db_url)
    pid = victim.info.backend_pid
    thread = threading.Thread(target=lambda: pytest.raises(psycopg.Error, victim.execute,
                                                           "SELECT llm_adamw_step('tr_lab', 1e-3)"))
    thread.start()
    time.sleep(0.5 * lab_model)                              # half way through a step
    assert q(conn, "SELECT pg_terminate_backend(%s)", pid)
    thread.join(30)
    victim.close()
    assert fingerprint(conn, "tr_lab") == before


# ---- checkpoints --------------------------------------------------------------------

def test_checkpoint_restores_weights_and_optimizer_bit_for_bit(conn):
    load_into_pg(conn, make_reference_model(TINY, seed=8), "tr_ckpt")
    conn.execute("UPDATE llm_param SET grad = llm_randn(shape, 0.1, 3) WHERE model = 'tr_ckpt'")
    q(conn, "SELECT llm_adamw_step('tr_ckpt', 1e-2)")
    saved = {c: column(conn, "tr_ckpt", c) for c in ("data", "m", "v")}
    ckpt = q(conn, "SELECT llm_checkpoint_save('tr_ckpt', 'after one step')")
    row = conn.execute("SELECT model, step, note, tensors, bytes > 0 FROM llm_checkpoints WHERE id = %s",
                       [ckpt]).fetchone()
    assert row == ("tr_ckpt", 1, "after one step", len(saved["data"]), True)

    for seed in (4, 5):                                         # train on
        conn.execute("UPDATE llm_param SET grad = llm_randn(shape, 0.1, %s) WHERE model = 'tr_ckpt'", [seed])
        q(conn, "SELECT llm_adamw_step('tr_ckpt', 1e-2)")
    assert q(conn, "SELECT llm_checkpoint_load('tr_ckpt', %s)", ckpt) == len(saved["data"])
    for c in ("data", "m", "v"):
        now = column(conn, "tr_ckpt", c)
        assert all(now[n].tobytes() == saved[c][n].tobytes() for n in saved[c]), c
    assert conn.execute("SELECT DISTINCT step, grad IS NULL FROM llm_param WHERE model = 'tr_ckpt'").fetchall() \
        == [(1, True)]

    # another model of the same shape loads it too, even after the first is gone
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size, "
                 "layer_norm_eps, n_inner) SELECT 'tr_twin', n_layer, n_head, n_embd, n_positions, "
                 "vocab_size, layer_norm_eps, n_inner FROM llm_model_config WHERE model = 'tr_ckpt'")
    conn.execute("DELETE FROM llm_model_config WHERE model = 'tr_ckpt'")
    q(conn, "SELECT llm_checkpoint_load('tr_twin', %s)", ckpt)
    twin = column(conn, "tr_twin", "v")
    assert all(twin[n].tobytes() == saved["v"][n].tobytes() for n in twin)

    conn.execute("SELECT llm_checkpoint_delete(%s)", [ckpt])
    assert q(conn, "SELECT count(*) FROM llm_checkpoint_param WHERE checkpoint = %s", ckpt) == 0


def test_checkpoint_file(conn, workdir):
    from safetensors.numpy import load_file
    load_into_pg(conn, make_reference_model(TINY, seed=9), "tr_file")
    path = workdir / "ckpt.safetensors"
    ckpt = q(conn, "SELECT llm_checkpoint_save('tr_file', path => %s)", str(path))
    assert q(conn, "SELECT path FROM llm_checkpoint WHERE id = %s", ckpt) == str(path)
    tensors, data = load_file(str(path)), column(conn, "tr_file")
    assert set(tensors) == set(data) and all(np.array_equal(tensors[n], data[n]) for n in data)


BAD_CHECKPOINTS = [
    ("SELECT llm_checkpoint_load('tr_other', {ckpt})", "22023", "another shape"),
    ("SELECT llm_checkpoint_load('tr_base', -1)", "42704", "no checkpoint -1"),
    ("SELECT llm_checkpoint_load('tr_nope', {ckpt})", "42704", 'unknown model "tr_nope"'),
    ("SELECT llm_checkpoint_save('tr_nope')", "42704", 'unknown model "tr_nope"'),
    ("SELECT llm_checkpoint_delete(-1)", "42704", "no checkpoint -1"),
    ("SELECT llm_checkpoint_load('tr_base', NULL)", "22004", 'argument "checkpoint" must not be NULL'),
    ("SELECT llm_checkpoint_save(NULL)", "22004", 'argument "model" must not be NULL'),
    ("SELECT llm_checkpoint_save('tr_base', path => 'relative.safetensors')", "42602", "is not absolute"),
]


@pytest.mark.parametrize("sql,sqlstate,message", BAD_CHECKPOINTS)
def test_bad_checkpoint_calls_write_nothing(conn, sql, sqlstate, message):
    load_into_pg(conn, make_reference_model(TINY, seed=10), "tr_base")
    ckpt = q(conn, "SELECT llm_checkpoint_save('tr_base')")
    other = dict(TINY, n_inner=52)                             # one tensor shape differs
    load_into_pg(conn, make_reference_model(other, seed=11), "tr_other")
    before = [fingerprint(conn, m) for m in ("tr_base", "tr_other")]
    checkpoints = q(conn, "SELECT count(*) FROM llm_checkpoint")
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql.format(ckpt=ckpt))
    assert info.value.sqlstate == sqlstate and message in str(info.value)
    assert [fingerprint(conn, m) for m in ("tr_base", "tr_other")] == before
    assert q(conn, "SELECT count(*) FROM llm_checkpoint") == checkpoints


# ---- data and the schedule -------------------------------------------------------------

def test_dataset_from_tokens(conn):
    tokens = list(range(100, 120))                             # 20 tokens
    assert q(conn, "SELECT llm_dataset_from_tokens(%s, 8, split => 'tr_a')", tokens) == 2
    assert q(conn, "SELECT llm_dataset_from_tokens(%s, 8, 3, 'tr_b')", tokens) == 4
    rows = conn.execute("SELECT tokens, target FROM llm_dataset WHERE split = 'tr_b' ORDER BY id").fetchall()
    for i, (x, y) in enumerate(rows):
        assert x == tokens[3 * i:3 * i + 8] and y == tokens[3 * i + 1:3 * i + 9]
    # any lower bound
    assert q(conn, "SELECT llm_dataset_from_tokens('[5:8]={1,2,3,4}'::int[], 3, 1, 'tr_c')") == 1
    assert conn.execute("SELECT tokens, target FROM llm_dataset WHERE split = 'tr_c'").fetchall() == \
        [([1, 2, 3], [2, 3, 4])]


@pytest.mark.parametrize("sql,sqlstate,message", [
    ("SELECT llm_dataset_from_tokens('{1,2,3}', 3)", "22023", "3 tokens are too few for one block of 3"),
    ("SELECT llm_dataset_from_tokens('{1,2,3}', 0)", "22023", "block_size and stride must be >= 1"),
    ("SELECT llm_dataset_from_tokens('{1,2,3}', 1, -1)", "22023", "block_size and stride must be >= 1"),
    ("SELECT llm_dataset_from_tokens('{1,NULL,3}', 1)", "22023", "without NULLs"),
    ("SELECT llm_dataset_from_tokens('{{1,2},{3,4}}', 1)", "22023", "one-dimensional"),
    ("SELECT llm_dataset_from_tokens(NULL, 1)", "22004", 'argument "tokens" must not be NULL'),
    ("SELECT llm_dataset_from_tokens('{1,-2,3}', 1)", "23514", "llm_dataset_token_ids"),
])
def test_dataset_errors(conn, sql, sqlstate, message):
    count = q(conn, "SELECT count(*) FROM llm_dataset")
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    assert info.value.sqlstate == sqlstate and message in str(info.value)
    assert q(conn, "SELECT count(*) FROM llm_dataset") == count


def test_lr_is_nanogpts_get_lr(conn):
    s = AdamWSettings(lr=6e-4, warmup_steps=10, decay_steps=60, min_lr=6e-5)
    got = [r[0] for r in conn.execute("SELECT llm_lr(i, 6e-4, 10, 60, 6e-5) FROM generate_series(0, 70) i")]
    assert got == [s.lr * (nanogpt_lr(it, s) / s.lr) for it in range(71)]   # the same doubles
    for sql, message in [("SELECT llm_lr(0, 1e-3, 10, 10)", "warmup_steps < decay_steps"),
                         ("SELECT llm_lr(-1, 1e-3, 0, 10)", "step must be >= 0"),
                         ("SELECT llm_lr(0, 1e-3, 0, 10, 2e-3)", "min_lr must be in [0, 0.001]")]:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert info.value.sqlstate == "22023" and message in str(info.value)
