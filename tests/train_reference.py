"""The PyTorch reference for training GPT-2 in pg_llm: what a training step
must compute, in plain torch, for the parity tests.

    model = make_reference_model(LAB, seed=0)          # a random GPT2LMHeadModel
    load_into_pg(conn, model, "lab")                    # the same weights in llm_param
    run = train_reference(model, batches, AdamWSettings(lr=6e-4, warmup_steps=10,
                                                        decay_steps=100, max_grad_norm=1.0))
    run.losses, run.grad_norms, run.lrs                 # one per step
    run.params["h.0.attn.c_attn.weight"]                # final weights, llm_param names
    run.exp_avg[...], run.exp_avg_sq[...], run.step     # AdamW state, as llm_param.m / v / step

The step, as nanoGPT takes it (and pg_llm must):
  * loss = mean cross-entropy of logits [B*T, V] against the targets, over
    every position whose target is not -100 (F.cross_entropy's mean), with
    dropout off (pg_llm has none);
  * loss.backward(); the tied lm_head adds its gradient to wte's;
  * torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm) when given
    (the norm of the per-tensor norms; the return value, before clipping, is
    the logged grad_norm; without clipping the norm is still measured);
  * torch.optim.AdamW over two groups: weight decay on the tensors with
    ndim >= 2 (wte, wpe and the matmul weights), none on biases and
    LayerNorm gains;
  * the learning rate of update `it` (0 for the first) is nanoGPT's
    get_lr(it), handed over by LambdaLR(opt, lambda it: get_lr(it) / lr).

Never a hub name: models come from a GPT2Config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel


# The lab model of the issue, and small odd ones for quick tests.
LAB = dict(n_layer=4, n_head=4, n_embd=128, n_positions=128, vocab_size=50257)
TINY = dict(n_layer=2, n_head=2, n_embd=34, n_positions=40, vocab_size=517, n_inner=50,
            layer_norm_epsilon=1e-3)
ONE = dict(n_layer=1, n_head=1, n_embd=8, n_positions=16, vocab_size=11)


def make_reference_model(config: dict, seed: int = 0) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel with HF's random initialisation (seeded), dropout off."""
    torch.manual_seed(seed)
    cfg = GPT2Config(bos_token_id=0, eos_token_id=0, pad_token_id=0,
                     attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, summary_first_dropout=0.0, **config)
    return GPT2LMHeadModel(cfg).eval()  # eval: no dropout; gradients still flow


def load_into_pg(conn, model: GPT2LMHeadModel, name: str) -> None:
    """Register `model` as `name` (replacing any model of that name) and copy its weights."""
    import pg_llm_lab
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    pg_llm_lab.import_hf(conn, model, name, progress=False)


def named_parameters(model: GPT2LMHeadModel) -> dict[str, torch.nn.Parameter]:
    """The model's parameters under llm_param's names (lm_head is wte: listed once)."""
    return dict(model.transformer.named_parameters())


# ---- the optimizer ---------------------------------------------------------------

@dataclass
class AdamWSettings:
    lr: float = 6e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0   # None: no clipping
    warmup_steps: int = 0
    decay_steps: int = 1_000_000        # where the cosine reaches min_lr
    min_lr: float | None = None         # None: lr / 10, as nanoGPT


def nanogpt_lr(it: int, s: AdamWSettings) -> float:
    """nanoGPT's get_lr(it) (train.py)."""
    min_lr = s.lr / 10 if s.min_lr is None else s.min_lr
    if it < s.warmup_steps:
        return s.lr * (it + 1) / (s.warmup_steps + 1)
    if it > s.decay_steps:
        return min_lr
    decay_ratio = (it - s.warmup_steps) / (s.decay_steps - s.warmup_steps)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (s.lr - min_lr)


def param_groups(model: GPT2LMHeadModel, weight_decay: float) -> list[dict]:
    """nanoGPT's two groups: decay for ndim >= 2, none for the rest."""
    params = named_parameters(model)
    return [{"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(model: GPT2LMHeadModel, s: AdamWSettings):
    """(AdamW over the two groups, its LambdaLR warmup + cosine schedule)."""
    opt = torch.optim.AdamW(param_groups(model, s.weight_decay), lr=s.lr, betas=s.betas, eps=s.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: nanogpt_lr(it, s) / s.lr)
    return opt, sched


# ---- training ---------------------------------------------------------------------

def batch_loss(model: GPT2LMHeadModel, tokens, targets) -> torch.Tensor:
    """Mean cross-entropy over the positions whose target is not -100 (tokens, targets: [B, T])."""
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if tokens.dim() == 1:
        tokens, targets = tokens[None], targets[None]
    logits = model(tokens).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


@dataclass
class StepResult:
    loss: float
    grad_norm: float                      # before clipping
    lr: float                             # the lr this update used
    grads: dict[str, np.ndarray] | None   # before clipping (keep_grads)


class ReferenceTrainer:
    """Steps a model as nanoGPT does; one step() per batch."""

    def __init__(self, model: GPT2LMHeadModel, settings: AdamWSettings):
        self.model, self.settings = model, settings
        self.opt, self.sched = make_optimizer(model, settings)
        self.params = named_parameters(model)

    def step(self, tokens, targets, keep_grads: bool = False) -> StepResult:
        self.opt.zero_grad(set_to_none=True)
        loss = batch_loss(self.model, tokens, targets)
        loss.backward()
        grads = ({n: p.grad.detach().numpy().copy() for n, p in self.params.items()}
                 if keep_grads else None)
        max_norm = self.settings.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              max_norm if max_norm is not None else math.inf)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        return StepResult(float(loss.detach()), float(norm), lr, grads)

    def state(self, name: str) -> dict:
        """AdamW's state of parameter `name`: exp_avg, exp_avg_sq, step."""
        return self.opt.state[self.params[name]]


@dataclass
class ReferenceRun:
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    params: dict[str, np.ndarray] = field(default_factory=dict)       # after the last step
    exp_avg: dict[str, np.ndarray] = field(default_factory=dict)      # llm_param.m
    exp_avg_sq: dict[str, np.ndarray] = field(default_factory=dict)   # llm_param.v
    step: int = 0                                                     # llm_param.step


def train_reference(model: GPT2LMHeadModel, batches, settings: AdamWSettings) -> ReferenceRun:
    """Train `model` in place on batches [(tokens, targets), ...] ([B, T] each), one
    update per batch; returns the per-step numbers and the final weights and state."""
    trainer = ReferenceTrainer(model, settings)
    run = ReferenceRun()
    for tokens, targets in batches:
        result = trainer.step(tokens, targets)
        run.losses.append(result.loss)
        run.grad_norms.append(result.grad_norm)
        run.lrs.append(result.lr)
    for name, p in trainer.params.items():
        run.params[name] = p.detach().numpy().copy()
        if trainer.opt.state.get(p):
            run.exp_avg[name] = trainer.state(name)["exp_avg"].numpy().copy()
            run.exp_avg_sq[name] = trainer.state(name)["exp_avg_sq"].numpy().copy()
            run.step = int(trainer.state(name)["step"])
    return run
