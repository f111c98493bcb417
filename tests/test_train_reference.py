"""The PyTorch training reference (tests/train_reference.py) itself: the
parity tests of the training step stand on it, so it must be nanoGPT's step."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference is PyTorch")
pytest.importorskip("transformers", reason="the reference is HF's GPT-2")

from train_reference import (LAB, ONE, TINY, AdamWSettings, ReferenceTrainer,  # noqa: E402
                             make_optimizer, make_reference_model, named_parameters,
                             nanogpt_lr, param_groups, train_reference)


def decays(name):
    """Which llm_param tensors nanoGPT decays, by name: embeddings and matmul weights."""
    return name in ("wte.weight", "wpe.weight") or (
        name.endswith(".weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc")))


@pytest.mark.parametrize("config", [ONE, TINY, LAB], ids=["one", "tiny", "lab"])
def test_groups_are_the_tensors_with_two_dims(config):
    model = make_reference_model(config)
    params = named_parameters(model)
    assert len(params) == 4 + 12 * config["n_layer"]          # llm_param's rows; lm_head is wte
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    by_id = {id(p): n for n, p in params.items()}
    decay_names = {by_id[id(p)] for p in decay["params"]}
    no_decay_names = {by_id[id(p)] for p in no_decay["params"]}
    assert decay_names == {n for n in params if decays(n)}
    assert no_decay_names == {n for n in params if not decays(n)}
    assert len(decay["params"]) + len(no_decay["params"]) == len(params) == len(set(by_id))
    assert all(params[n].dim() >= 2 for n in decay_names) and all(params[n].dim() == 1 for n in no_decay_names)


def test_weight_decay_reaches_only_the_decay_group():
    """Zero gradients: AdamW's step is 0, so decayed tensors shrink by exactly 1 - lr*wd."""
    model = make_reference_model(ONE)
    s = AdamWSettings(lr=0.5, weight_decay=0.2)
    opt, _ = make_optimizer(model, s)
    before = {n: p.detach().clone() for n, p in named_parameters(model).items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in named_parameters(model).items():
        want = before[n] * (1 - 0.5 * 0.2) if decays(n) else before[n]
        assert torch.equal(p.detach(), want), n


def test_lr_is_nanogpts_schedule():
    s = AdamWSettings(lr=6e-4, warmup_steps=5, decay_steps=20, min_lr=6e-5)
    model = make_reference_model(ONE)
    trainer = ReferenceTrainer(model, s)
    rng = np.random.default_rng(0)
    lrs = []
    for _ in range(25):
        tokens = rng.integers(0, 11, (2, 6))
        lrs.append(trainer.step(tokens, np.roll(tokens, -1, axis=1)).lr)
    assert lrs[0] == pytest.approx(6e-4 / 6) and lrs[4] == pytest.approx(6e-4 * 5 / 6)
    assert lrs[5] == pytest.approx(6e-4)                     # the peak after warmup
    assert lrs[21:] == [pytest.approx(6e-5)] * 4             # past decay_steps: min_lr
    for it, lr in enumerate(lrs):
        assert lr == s.lr * (nanogpt_lr(it, s) / s.lr)       # what LambdaLR hands over
    assert all(a > b for a, b in zip(lrs[5:21], lrs[6:21]))  # the cosine falls


def batches(vocab, n, seed=0, B=2, T=8):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, vocab, (B, T))
        targets = np.roll(tokens, -1, axis=1)
        targets[:, -1] = -100
        out.append((tokens, targets))
    return out


def test_a_run_is_deterministic_and_learns():
    data = batches(TINY["vocab_size"], 1) * 12          # one batch, again and again
    s = AdamWSettings(lr=3e-3, warmup_steps=2, decay_steps=12)
    first = train_reference(make_reference_model(TINY, seed=3), data, s)
    again = train_reference(make_reference_model(TINY, seed=3), data, s)
    assert first.losses == again.losses and first.grad_norms == again.grad_norms
    assert all(np.array_equal(first.params[n], again.params[n]) for n in first.params)
    assert first.losses[-1] < first.losses[0] - 1.0     # it memorises the batch
    assert first.step == 12 and set(first.exp_avg) == set(first.params)
    assert math.isclose(first.losses[0], math.log(TINY["vocab_size"]), rel_tol=0.05)  # random init


def test_clipping_caps_the_update():
    """With max_grad_norm tiny, every step's grad_norm (before clipping) exceeds it,
    and the clipped gradients have norm max_grad_norm."""
    model = make_reference_model(TINY, seed=1)
    trainer = ReferenceTrainer(model, AdamWSettings(max_grad_norm=1e-3))
    tokens, targets = batches(TINY["vocab_size"], 1)[0]
    result = trainer.step(tokens, targets, keep_grads=True)
    total = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in result.grads.values()))
    assert result.grad_norm == pytest.approx(total, rel=1e-5) and total > 1e-3
    clipped = math.sqrt(sum(float(torch.sum(p.grad.double() ** 2)) for p in model.parameters()))
    assert clipped == pytest.approx(1e-3, rel=1e-4)
