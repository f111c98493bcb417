"""HuggingFace GPT-2 checkpoints in and out of pg_llm, from the client side.

    from pg_llm_lab import hf
    hf.import_hf(conn, "checkpoints/gpt2", "gpt2")      # a folder: config.json + weights
    hf.import_hf(conn, model, "gpt2")                   # a transformers GPT2LMHeadModel
    hf.export_hf(conn, "gpt2", "checkpoints/gpt2-tuned")
    hf.convert(conn, "checkpoints/gpt2", "gpt2.npz")    # for the server-side importers

These functions read and write files *here*, on the client, and send the
tensors over the connection: they work with any server, remote or in
Docker.  The SQL functions (llm_import_hf, pg_llm_import_safetensors,
pg_llm_import_npz, llm_export_hf) do the same with files on the *server*.

Both sides name parameters with the same SQL function, llm_hf_param_name
(see param_names), and register configs with llm_register_hf_config.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from psycopg.types.json import Jsonb

from . import tokenizer

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"   # a checkpoint split into shards
PYTORCH_BIN = "pytorch_model.bin"


# -- names --------------------------------------------------------------------

def param_names(conn, stored: list[str]) -> list[tuple[str, str]]:
    """(llm_param name, stored name) of the tensors of a HuggingFace GPT-2 checkpoint
    that are parameters, in order.  The server names them (SQL's llm_hf_param_name,
    the rule its own importers follow): "transformer." dropped, the attention-mask
    buffers and the tied lm_head.weight left out."""
    rows = conn.execute("SELECT llm_hf_param_name(u.name), u.name FROM unnest(%s::text[]) "
                        "WITH ORDINALITY AS u(name, i) ORDER BY u.i", [list(stored)]).fetchall()
    return [(param, name) for param, name in rows if param is not None]


# -- reading checkpoints ------------------------------------------------------------

@dataclass
class Checkpoint:
    """A checkpoint's config and its tensors, loaded one at a time.

    names: the tensor names as stored (HuggingFace's);
    load(name): that tensor as a float32 ndarray.
    """
    config: dict
    names: list[str]
    load: Callable[[str], np.ndarray]


def to_float32(value) -> np.ndarray:
    """A torch tensor or array-like as a C-contiguous float32 ndarray."""
    if hasattr(value, "detach"):  # torch.Tensor (float16/bfloat16 included)
        import torch
        value = value.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


def config_dict(config) -> dict:
    """A GPT-2 config as a plain dict: from a dict, a transformers config, or a config.json path."""
    if isinstance(config, dict):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        return json.loads(Path(config).read_text())
    if hasattr(config, "to_json_string"):  # transformers.PretrainedConfig
        return json.loads(config.to_json_string())
    raise TypeError(f"not a config: {config!r} (give a dict, a GPT2Config or a config.json path)")


def _open_safetensors(path: Path, stack: contextlib.ExitStack) -> tuple[list[str], Callable]:
    from safetensors import safe_open
    try:  # torch reads every dtype (bfloat16 too); numpy is enough for the rest
        import torch  # noqa: F401
        framework = "pt"
    except ImportError:
        framework = "np"
    f = stack.enter_context(safe_open(str(path), framework=framework))
    return list(f.keys()), lambda name: to_float32(f.get_tensor(name))


def _open_sharded_safetensors(index: Path, stack) -> tuple[list[str], Callable]:
    weight_map = json.loads(index.read_text())["weight_map"]  # tensor name -> shard file
    shards = {file: _open_safetensors(index.parent / file, stack)[1] for file in set(weight_map.values())}
    return list(weight_map), lambda name: shards[weight_map[name]](name)


def _open_torch(path: Path) -> tuple[list[str], Callable]:
    import torch
    state = torch.load(path, map_location="cpu", weights_only=True)
    return list(state), lambda name: to_float32(state[name])


def _open_npz(path: Path, stack) -> tuple[list[str], Callable]:
    arrays = stack.enter_context(np.load(path, allow_pickle=False))
    return list(arrays.files), lambda name: to_float32(arrays[name])


def _open_weights(path: Path, stack) -> tuple[list[str], Callable]:
    """Tensor names and loader of a weights file, or of the weights in a folder."""
    if path.is_dir():
        for candidate in (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN):
            if (path / candidate).exists():
                return _open_weights(path / candidate, stack)
        raise FileNotFoundError(f"{path} has no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN}")
    if path.name.endswith(".index.json"):
        return _open_sharded_safetensors(path, stack)
    if path.suffix == ".safetensors":
        return _open_safetensors(path, stack)
    if path.suffix == ".npz":
        return _open_npz(path, stack)
    if path.suffix in (".bin", ".pt", ".pth"):
        return _open_torch(path)
    raise ValueError(f"{path}: unknown checkpoint format (expected .safetensors, .npz or .bin)")


def missing_folder(source) -> str | None:
    """"no such folder: SRC" when source is written as a path (contains a / or
    starts with .) and nothing is there, else None.  A bare name such as gpt2
    is left to open_checkpoint: it could be a hub name, which pg_llm_lab
    never downloads."""
    text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if text is None or not ("/" in text or os.sep in text or text.startswith(".")):
        return None
    return None if Path(text).expanduser().exists() else f"no such folder: {text}"


@contextlib.contextmanager
def open_checkpoint(source, config=None):
    """Open a checkpoint: yields a Checkpoint.

    source: a transformers model (GPT2LMHeadModel or GPT2Model); a folder
    with config.json and model.safetensors (or shards, or pytorch_model.bin);
    or a .safetensors / .npz / .bin file.  config (a dict, a GPT2Config or a
    config.json path) replaces the source's; a lone file needs one, unless a
    config.json lies next to it.
    """
    with contextlib.ExitStack() as stack:
        if hasattr(source, "state_dict") and hasattr(source, "config"):
            state = source.state_dict()
            yield Checkpoint(config_dict(source.config if config is None else config), list(state),
                             lambda name: to_float32(state[name]))
            return
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(missing_folder(source) or
                                    f"no such checkpoint: {path} (a folder or file here; hub names are "
                                    f"not downloaded)")
        if config is None:
            config = (path if path.is_dir() else path.parent) / CONFIG
            if not config.exists():
                raise ValueError(f"{path}: no {CONFIG} found; pass config= (a dict, a GPT2Config "
                                 f"or a config.json path)")
        names, load = _open_weights(path, stack)
        yield Checkpoint(config_dict(config), names, load)


# -- importing ---------------------------------------------------------------------

def _progress(items, enabled: bool, desc: str, total: int | None = None):
    """items, with a tqdm progress bar if enabled (a widget in Jupyter)."""
    if not enabled:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, unit="tensor", total=total)


def _check_names(params: list[tuple[str, str]], expected: dict, name: str) -> None:
    """Every parameter exactly once, nothing unknown: else ValueError naming them."""
    seen = {}
    for param, stored in params:
        if param in seen:
            raise ValueError(f"the checkpoint holds {param!r} twice (as {seen[param]!r} and {stored!r})")
        seen[param] = stored
    unknown = sorted(stored for param, stored in seen.items() if param not in expected)
    missing = sorted(set(expected) - set(seen))
    if unknown:
        raise ValueError(f"not parameters of GPT-2 model {name!r}: {', '.join(unknown[:5])}"
                         + (" ..." if len(unknown) > 5 else ""))
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} parameter(s) of model {name!r}: "
                         f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))


def import_hf(conn, source, name: str, *, config=None, progress: bool = True) -> int:
    """Load a GPT-2 checkpoint into llm_param as model `name`; returns the tensors imported.

    source: see open_checkpoint (a model object, a folder, or a file with
    config=).  The config is registered in llm_model_config, or checked
    against the model's row if it exists.  Everything happens in one
    transaction: on any error llm_param is left as it was.
    """
    with open_checkpoint(source, config) as checkpoint, conn.transaction():
        conn.execute("SELECT llm_commit_durably()")     # the imported weights survive a crash
        conn.execute("SELECT llm_register_hf_config(%s, %s)", [name, Jsonb(checkpoint.config)])
        conn.execute("SELECT llm_require_model_owner(%s)", [name])     # (a model shared with us is read-only)
        expected = {row[0]: tuple(row[1]) for row in
                    conn.execute("SELECT name, shape FROM llm_param_shapes(%s)", [name])}
        params = param_names(conn, checkpoint.names)
        _check_names(params, expected, name)

        conn.execute("DELETE FROM llm_param WHERE model = %s", [name])
        # One INSERT a tensor, in binary (COPY FROM is refused where row-level security applies).
        with conn.cursor(binary=True) as cur:
            for param, stored in _progress(params, progress, f"import {name}"):
                array = checkpoint.load(stored)
                if array.shape != expected[param]:
                    raise ValueError(f"{stored!r} has shape {list(array.shape)}, model {name!r} "
                                     f"expects {list(expected[param])}")
                cur.execute("INSERT INTO llm_param (model, name, data) VALUES (%s, %s, %s)", [name, param, array])
        conn.execute("SELECT llm_check_complete(%s)", [name])
    return len(params)


# -- exporting ---------------------------------------------------------------------

def _new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 minus the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename tmp to path: a reader never sees half a file.
    (tmp keeps path's suffix: np.savez would append ".npz" otherwise.)"""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        # safetensors creates files readable by their owner only; give the file
        # the mode any new file gets, so that a database server running as
        # another OS user can read it (pg_llm_import_safetensors).
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_hf(conn, name: str, out_dir, *, progress: bool = True) -> Path:
    """Write model `name` as a HuggingFace folder (config.json + model.safetensors,
    and vocab.json + merges.txt when the model has a tokenizer of its name).

    GPT2LMHeadModel.from_pretrained(out_dir) loads it, and
    GPT2TokenizerFast.from_pretrained(out_dir) its tokenizer.  lm_head.weight
    is left out, as HuggingFace itself saves tied weights: it is wte.weight.
    """

    from safetensors.numpy import save_file

    out_dir = Path(out_dir).expanduser()
    with conn.transaction():
        config = conn.execute("SELECT llm_hf_config(%s)", [name]).fetchone()[0]
        conn.execute("SELECT llm_check_complete(%s)", [name])
        count = conn.execute("SELECT count(*) FROM llm_param WHERE model = %s", [name]).fetchone()[0]
        with conn.cursor(binary=True) as cur:  # binary: the float32 bytes as they are
            cur.execute("SELECT name, data FROM llm_param WHERE model = %s ORDER BY name", [name])
            tensors = dict(_progress(cur, progress, f"export {name}", total=count))

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_dir / SAFETENSORS,
                      lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    _write_atomically(out_dir / CONFIG,
                      lambda tmp: tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    if tokenizer.has_tokenizer(conn, name):
        tokenizer.export_tokenizer(conn, name, out_dir)
    return out_dir


# -- converting -------------------------------------------------------------------

# The config keys llm_register_hf_config reads (the rest is for HuggingFace).
CONFIG_KEYS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "layer_norm_epsilon",
               "n_inner", "activation_function", "model_type", "scale_attn_weights",
               "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "tie_word_embeddings")


def convert(conn, source, out_path, *, config=None) -> dict:
    """Turn a HuggingFace checkpoint into the .npz or .safetensors file (by
    out_path's suffix) that pg_llm_import_npz / pg_llm_import_safetensors read
    on the server: float32, llm_param names, buffers and lm_head dropped (the
    names come from conn's server: see param_names).

    source: as for open_checkpoint.  Returns the config (a dict) to register:
    SELECT llm_register_hf_config(model, config) before importing.
    """
    from safetensors.numpy import save_file

    out_path = Path(out_path).expanduser()
    if out_path.suffix not in (".npz", ".safetensors"):
        raise ValueError(f"{out_path}: the output must end in .npz or .safetensors")
    with open_checkpoint(source, config) as checkpoint:
        tensors = {param: checkpoint.load(stored) for param, stored in param_names(conn, checkpoint.names)}
        config = checkpoint.config
    if out_path.suffix == ".npz":
        _write_atomically(out_path, lambda tmp: np.savez(tmp, **tensors))
    else:
        _write_atomically(out_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    return {key: config[key] for key in CONFIG_KEYS if key in config}
