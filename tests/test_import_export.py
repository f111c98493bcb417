"""Checkpoints in and out: HuggingFace GPT-2 <-> llm_param.

Random-init HF models (no downloads) are saved to a temporary folder that the
database server can read, then imported by every path -- server-side
safetensors, .npz (stored and deflated), HF folder; client-side from a folder
and from a model object -- and compared with the HF state_dict exactly (and
through llm_logits).  Exports (server and client) are reloaded with
GPT2LMHeadModel.from_pretrained and compared exactly.

Bad files are in test_import_export_errors.py.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import psycopg
import pytest

from pg_llm_lab import hf

torch = pytest.importorskip("torch", reason="the HF checkpoints are made with PyTorch")
pytest.importorskip("transformers", reason="the HF checkpoints are made with transformers")
from hf_checkpoints import CONFIGS, drop_io_models, make_readable, models, workdir  # noqa: E402,F401
from safetensors.numpy import save_file  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402


def hf_state(model) -> dict[str, np.ndarray]:
    """llm_param name -> float32 array of every parameter of an HF model: the names
    of its transformer's parameters (lm_head.weight is wte.weight; buffers are not
    parameters)."""
    return {k: v.detach().numpy() for k, v in model.transformer.named_parameters()}


def db_params(conn, model_name) -> dict[str, np.ndarray]:
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT name, data FROM llm_param WHERE model = %s", [model_name])
        return dict(cur.fetchall())


def assert_same_params(conn, model_name, hf_model):
    got, want = db_params(conn, model_name), hf_state(hf_model)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == np.float32
        assert np.array_equal(got[name], want[name]), name


def assert_same_logits(conn, model_name, hf_model):
    """llm_logits within 1e-4 * max|logit| of HF's."""
    vocab, n_positions = hf_model.config.vocab_size, hf_model.config.n_positions
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, vocab, n_positions)]
    got = conn.execute("SELECT llm_logits(%s, %s)", [model_name, tokens]).fetchone()[0]
    with torch.no_grad():
        want = hf_model(torch.tensor([tokens])).logits[0].numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def register(conn, model_name, hf_model):
    conn.execute("SELECT llm_register_hf_config(%s, %s)",
                 [model_name, psycopg.types.json.Jsonb(hf.config_dict(hf_model.config))])


# -- names ----------------------------------------------------------------------

NAMES = ["transformer.wte.weight", "wpe.weight", "transformer.h.0.attn.c_attn.bias",
         "h.11.attn.bias", "transformer.h.3.attn.masked_bias", "lm_head.weight",
         "h.0.mlp.c_proj.weight", "transformer.ln_f.bias", "attn.bias", "h.0.attn.c_attn.weight"]


def test_the_server_names_the_parameters(conn):
    """hf.param_names asks SQL's llm_hf_param_name: "transformer." dropped, the
    attention-mask buffers and the tied lm_head left out, the order kept."""
    assert hf.param_names(conn, NAMES) == [
        ("wte.weight", "transformer.wte.weight"), ("wpe.weight", "wpe.weight"),
        ("h.0.attn.c_attn.bias", "transformer.h.0.attn.c_attn.bias"),
        ("h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.weight"), ("ln_f.bias", "transformer.ln_f.bias"),
        ("h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight")]


# -- server-side import ------------------------------------------------------------

def test_read_safetensors_returns_the_file(conn, models):
    model, folder = models["io_tiny"]
    rows = conn.execute("SELECT name, dtype, shape, data FROM llm_read_safetensors(%s)",
                        [str(folder / "model.safetensors")]).fetchall()
    state = {k: v.numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert sorted(r[0] for r in rows) == sorted(state)
    for name, dtype, shape, data in rows:
        assert dtype == "F32" and shape == list(state[name].shape)
        assert np.array_equal(data, state[name])


@pytest.mark.parametrize("name", CONFIGS)
def test_import_hf_folder(conn, models, name):
    model, folder = models[name]
    assert conn.execute("SELECT llm_import_hf(%s, %s)", [str(folder), name]).fetchone()[0] == len(hf_state(model))
    row = conn.execute("SELECT n_layer, n_head, n_embd, n_positions, vocab_size, n_inner, layer_norm_eps "
                       "FROM llm_model_config WHERE model = %s", [name]).fetchone()
    c = model.config
    assert row == (c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size, c.n_inner,
                   pytest.approx(c.layer_norm_epsilon))
    assert_same_params(conn, name, model)
    assert_same_logits(conn, name, model)


def test_import_hf_again_replaces_and_checks_config(conn, models):
    model, folder = models["io_tiny"]
    conn.execute("SELECT llm_import_hf(%s, 'io_tiny')", [str(folder)])
    conn.execute("UPDATE llm_param SET data = llm_scale(data, 2), step = 5 WHERE model = 'io_tiny'")
    conn.execute("SELECT llm_import_hf(%s, 'io_tiny')", [str(folder)])  # same config: fine
    assert_same_params(conn, "io_tiny", model)
    assert conn.execute("SELECT max(step) FROM llm_param WHERE model = 'io_tiny'").fetchone()[0] == 0


def test_import_safetensors_file(conn, models, workdir):
    model, _ = models["io_odd"]
    path = workdir / "odd.safetensors"  # HF names with the transformer. prefix, lm_head included
    save_file({k: v.numpy().copy() for k, v in model.state_dict().items()}, str(path))
    make_readable(path)
    register(conn, "io_odd", model)
    assert conn.execute("SELECT pg_llm_import_safetensors(%s, 'io_odd')", [str(path)]).fetchone()[0] == \
        len(hf_state(model))
    assert_same_params(conn, "io_odd", model)


@pytest.mark.parametrize("savez", [np.savez, np.savez_compressed], ids=["stored", "deflated"])
def test_import_npz(conn, models, workdir, savez):
    model, _ = models["io_tiny"]
    path = workdir / f"tiny_{savez.__name__}.npz"
    savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})
    make_readable(path)
    register(conn, "io_tiny", model)
    assert conn.execute("SELECT pg_llm_import_npz(%s, 'io_tiny')", [str(path)]).fetchone()[0] == \
        len(hf_state(model))
    assert_same_params(conn, "io_tiny", model)
    assert_same_logits(conn, "io_tiny", model)


def test_npz_with_zip64_records_everywhere(conn, workdir, monkeypatch):
    """numpy writes zip64 extra fields; archives over 2 GB also need zip64 in
    the central directory and a zip64 end record.  Lowering zipfile's limit
    makes a small archive use them all."""
    import zipfile
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(100, np.float32)}
    path = workdir / "zip64.npz"
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 8)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)
    np.savez(path, **arrays)
    monkeypatch.undo()
    raw = path.read_bytes()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw  # zip64 end record and locator
    make_readable(path)
    rows = conn.execute("SELECT name, data FROM llm_read_npz(%s)", [str(path)]).fetchall()
    assert {n: d.tolist() for n, d in rows} == {n: a.tolist() for n, a in arrays.items()}


def test_import_converted_files(conn, models, workdir):
    """hf.convert (the old convert_gpt2_checkpoint.py) makes what the server reads."""
    model, folder = models["io_odd"]
    for out in ("odd_converted.npz", "odd_converted.safetensors"):
        config = hf.convert(conn, folder, workdir / out)
        conn.execute("SELECT llm_register_hf_config('io_odd', %s)", [psycopg.types.json.Jsonb(config)])
        importer = "pg_llm_import_npz" if out.endswith(".npz") else "pg_llm_import_safetensors"
        conn.execute(f"SELECT {importer}(%s, 'io_odd')", [str(workdir / out)])
        assert_same_params(conn, "io_odd", model)
    with np.load(workdir / "odd_converted.npz") as f:
        assert sorted(f.files) == sorted(hf_state(model))  # HF names, no prefix, no buffers


def test_convert_command_prints_the_sql(models, workdir, capsys):
    from pg_llm_lab import cli

    _, folder = models["io_tiny"]
    assert cli.main(["convert", str(folder), str(workdir / "cli.npz"), "--name", "io_cli"]) == 0
    out = capsys.readouterr().out
    assert "llm_register_hf_config('io_cli'" in out and "pg_llm_import_npz(" in out


# -- other dtypes ---------------------------------------------------------------------

SPECIAL = [0.0, -0.0, 1.0, -2.5, 1e-7, 6e-8, 65504.0, 3.0e38, np.inf, -np.inf, np.nan]


def same_floats(got, want):
    """Equal as float32 bit patterns (signed zeros and NaNs included)."""
    want = np.asarray(want, dtype=np.float32)
    return got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32))


def read_binary(conn, sql, path) -> dict:
    """name -> (dtype, shape, data), fetched in binary: exact to the bit.  (The
    text format of -0 is "-0", which JSON-style parsing reads as the integer 0.)"""
    with conn.cursor(binary=True) as cur:
        return {r[0]: r[1:] for r in cur.execute(sql, [str(path)])}


def test_safetensors_dtypes_become_float32(conn, workdir):
    from safetensors.torch import save_file as save_torch
    values = torch.tensor(SPECIAL[:7], dtype=torch.float64)
    tensors = {"f16": values.to(torch.float16), "bf16": values.to(torch.bfloat16),
               "f64": torch.tensor(SPECIAL, dtype=torch.float64).reshape(1, 11),
               "scalar": torch.tensor(3.5)}
    path = workdir / "dtypes.safetensors"
    save_torch(tensors, str(path))
    make_readable(path)
    rows = read_binary(conn, "SELECT name, dtype, shape, data FROM llm_read_safetensors(%s)", path)
    assert {k: v[:2] for k, v in rows.items()} == {
        "f16": ("F16", [7]), "bf16": ("BF16", [7]), "f64": ("F64", [1, 11]), "scalar": ("F32", [1])}
    for name, tensor in tensors.items():
        assert same_floats(rows[name][2], tensor.to(torch.float32).numpy().reshape(rows[name][1])), name


def test_npz_dtypes_become_float32(conn, workdir):
    arrays = {"f2": np.array(SPECIAL[:7], "<f2"), "f8": np.array(SPECIAL, "<f8").reshape(11, 1),
              "big": np.array(SPECIAL, ">f4"), "scalar": np.float32(2.5), "v3": np.arange(6, dtype="<f4")}
    path = workdir / "dtypes.npz"
    np.savez_compressed(path, **arrays)
    make_readable(path)
    rows = read_binary(conn, "SELECT name, dtype, shape, data FROM llm_read_npz(%s)", path)
    assert {k: v[0] for k, v in rows.items()} == {"f2": "F16", "f8": "F64", "big": "F32", "scalar": "F32",
                                                  "v3": "F32"}
    for name, array in arrays.items():
        assert same_floats(rows[name][2], np.asarray(array, np.float32).reshape(rows[name][1])), name


# -- client-side import -----------------------------------------------------------------

def test_client_import_from_folder(conn, models):
    model, folder = models["io_odd"]
    assert hf.import_hf(conn, folder, "io_odd", progress=False) == len(hf_state(model))
    assert_same_params(conn, "io_odd", model)
    assert_same_logits(conn, "io_odd", model)


def test_client_import_from_model_object(conn, models):
    model, _ = models["io_tiny"]
    hf.import_hf(conn, model, "io_tiny", progress=False)
    assert_same_params(conn, "io_tiny", model)
    assert_same_logits(conn, "io_tiny", model)


def test_client_import_from_pytorch_bin_and_npz(conn, models, workdir):
    model, folder = models["io_tiny"]
    bin_folder = workdir / "tiny_bin"
    bin_folder.mkdir(exist_ok=True)
    shutil.copy(folder / "config.json", bin_folder)
    torch.save(model.state_dict(), bin_folder / "pytorch_model.bin")
    hf.import_hf(conn, bin_folder, "io_tiny", progress=False)
    assert_same_params(conn, "io_tiny", model)

    npz = workdir / "tiny_client.npz"
    np.savez(npz, **{k: v.numpy() for k, v in model.state_dict().items()})
    hf.import_hf(conn, npz, "io_tiny2", config=model.config, progress=False)
    assert_same_params(conn, "io_tiny2", model)
    with pytest.raises(ValueError, match="config"):
        hf.import_hf(conn, npz, "io_tiny3", progress=False)  # no config.json next to it


def test_client_import_errors_leave_llm_param_alone(conn, models, workdir):
    model, folder = models["io_tiny"]
    hf.import_hf(conn, folder, "io_tiny", progress=False)
    before = db_params(conn, "io_tiny")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for bad, match in [({**state, "h.0.attn.c_attn.weight": state["transformer.h.0.attn.c_attn.weight"].T},
                        "twice"),
                       ({k: v for k, v in state.items() if "ln_f" not in k}, "lacks"),
                       ({**state, "h.7.mlp.c_fc.weight": state["transformer.h.0.mlp.c_fc.weight"]},
                        "not parameters")]:
        path = workdir / "client_bad.npz"
        np.savez(path, **bad)
        with pytest.raises(ValueError, match=match):
            hf.import_hf(conn, path, "io_tiny", config=model.config, progress=False)
    transposed = {**state, "transformer.h.1.attn.c_proj.weight": np.zeros((96, 95), np.float32)}
    np.savez(workdir / "client_bad.npz", **transposed)
    with pytest.raises(ValueError, match="shape"):
        hf.import_hf(conn, workdir / "client_bad.npz", "io_tiny", config=model.config, progress=False)
    after = db_params(conn, "io_tiny")
    assert sorted(after) == sorted(before)
    assert all(np.array_equal(after[k], before[k]) for k in before)


# -- export ---------------------------------------------------------------------------

def assert_hf_loads_the_same(folder: Path, model):
    loaded = GPT2LMHeadModel.from_pretrained(folder).eval()
    want, got = model.state_dict(), loaded.state_dict()
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # still tied
    tokens = torch.arange(model.config.n_positions).remainder(model.config.vocab_size)[None]
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)


@pytest.mark.parametrize("name", CONFIGS)
def test_server_export_loads_in_hf(conn, models, workdir, name):
    model, folder = models[name]
    hf.import_hf(conn, model, name, progress=False)
    out = workdir / f"{name}_server_export"   # created by the server
    written = conn.execute("SELECT llm_export_hf(%s, %s)", [name, str(out)]).fetchone()[0]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    assert written == sum(p.stat().st_size for p in out.iterdir())
    assert_hf_loads_the_same(out, model)
    # and back in: the exported folder imports to the very same parameters
    conn.execute("SELECT llm_import_hf(%s, %s)", [str(out), name + "_back"])
    assert_same_params(conn, name + "_back", model)


def test_server_export_safetensors_overwrites(conn, models, workdir):
    model, _ = models["io_tiny"]
    hf.import_hf(conn, model, "io_tiny", progress=False)
    path = workdir / "tiny_export.safetensors"
    path.write_bytes(b"old contents")
    path.chmod(0o666)
    size = conn.execute("SELECT pg_llm_export_safetensors('io_tiny', %s)", [str(path)]).fetchone()[0]
    assert size == path.stat().st_size
    rows = conn.execute("SELECT name, data FROM llm_read_safetensors(%s)", [str(path)]).fetchall()
    want = hf_state(model)
    assert sorted(n for n, _ in rows) == sorted(want)
    assert all(np.array_equal(d, want[n]) for n, d in rows)
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"}


def test_client_export_loads_in_hf(conn, models, workdir):
    model, _ = models["io_odd"]
    hf.import_hf(conn, model, "io_odd", progress=False)
    out = hf.export_hf(conn, "io_odd", workdir / "odd_client_export", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert_hf_loads_the_same(out, model)


def test_text_files_round_trip(conn, workdir):
    path = workdir / "sub" / "notes.txt"     # the server creates sub/
    text = "GPT-2 \u00e9t\u00e9 \u2603\nline 2\n"
    assert conn.execute("SELECT llm_write_text_file(%s, %s)", [str(path), text]).fetchone()[0] == \
        len(text.encode())
    assert path.read_text(encoding="utf-8") == text
    assert conn.execute("SELECT llm_read_text_file(%s)", [str(path)]).fetchone()[0] == text
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # like COPY TO: readable by all
