"""Shared by the import/export tests: random HF GPT-2 models saved where the
database server can read them."""
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

# name -> GPT2Config arguments: an odd small model, and one with n_inner and eps set.
CONFIGS = {
    "io_tiny": dict(n_layer=3, n_head=3, n_embd=96, n_positions=64, vocab_size=1000),
    "io_odd": dict(n_layer=2, n_head=2, n_embd=34, n_positions=40, vocab_size=517,
                   n_inner=50, layer_norm_epsilon=1e-3),
}


def make_hf_model(seed=0, scale=1.0, **config) -> GPT2LMHeadModel:
    """A random GPT2LMHeadModel in eval mode.  Biases and LayerNorm weights are
    randomised too (HF initialises them to 0 and 1): every tensor differs, so a
    mixed-up name shows.  `scale` > 1 multiplies the other weights, which
    sharpens the logits (well separated argmaxes for greedy tests)."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                       **config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.05)
            elif ".ln_" in name or "ln_f" in name:
                p.normal_(1, 0.1)
            elif scale != 1.0:
                p.mul_(scale)
    return model


def make_readable(path: Path) -> None:
    """Let the server (another OS user when we are root) read path, and write
    into it if a folder."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        p.chmod(0o777 if p.is_dir() else 0o644)


# -- fixtures --------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir():
    """A temporary folder the server can read and write."""
    path = Path(tempfile.mkdtemp(prefix="pg_llm_io_"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def models(workdir):
    """name -> (HF model, its save_pretrained folder)."""
    out = {}
    for name, config in CONFIGS.items():
        model = make_hf_model(**config)
        folder = workdir / name
        model.save_pretrained(folder)
        make_readable(folder)
        out[name] = (model, folder)
    return out


@pytest.fixture(autouse=True)
def drop_io_models(db_url):
    """After each test: no io_* models left (llm_param rows go with them)."""
    yield
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(r"DELETE FROM llm_model_config WHERE model LIKE 'io\_%'")
