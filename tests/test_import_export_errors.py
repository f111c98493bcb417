"""Bad checkpoints: every one is an ERROR with a fitting SQLSTATE, never a crash,
and llm_param (and llm_model_config) stay exactly as they were.

    22P03 invalid_binary_representation   the file breaks its format's rules
    XX001 data_corrupted                  truncated, or a failed CRC-32
    0A000 feature_not_supported           valid, but not something we read
    58P01 undefined_file, 42602 invalid_name (relative path), 42501 privileges
    22000 / 22023 / 42704 / 42710         wrong shapes / names / model / duplicates

Plus a fuzz test: random damage to small files must never crash the backend.
"""
import json
import random
import struct
import zipfile

import numpy as np
import psycopg
import pytest

from pg_llm_lab import hf

torch = pytest.importorskip("torch", reason="the HF checkpoints are made with PyTorch")
pytest.importorskip("transformers", reason="the HF checkpoints are made with transformers")
from hf_checkpoints import (CONFIGS, drop_io_models, make_hf_model, make_readable,  # noqa: E402,F401
                            models, workdir)  # (fixtures too)
from safetensors.numpy import save as safetensors_bytes  # noqa: E402

MODEL = "io_tiny"


# -- helpers ----------------------------------------------------------------------

def snapshot(conn, model):
    """Everything about a model's rows: config (with version) and a checksum of llm_param."""
    return conn.execute("""
        SELECT (SELECT row(c.*)::text FROM llm_model_config c WHERE c.model = %(m)s),
               (SELECT md5(string_agg(p.name || ':' || md5(llm_bytea(p.data)) || ':' || p.step || ':'
                                      || coalesce(md5(llm_bytea(p.grad)), '-'), ',' ORDER BY p.name))
                FROM llm_param p WHERE p.model = %(m)s),
               (SELECT count(*) FROM llm_model_config)""", {"m": model}).fetchone()


def state(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def split_safetensors(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack_from("<Q", blob)[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join_safetensors(header, data: bytes, header_len=None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


@pytest.fixture
def imported(conn, models):
    """io_tiny imported (with a training step's worth of changes): its snapshot."""
    model, folder = models[MODEL]
    conn.execute("SELECT llm_import_hf(%s, %s)", [str(folder), MODEL])
    conn.execute("UPDATE llm_param SET grad = data, step = 3 WHERE model = %s AND name LIKE 'h.0.%%'", [MODEL])
    yield snapshot(conn, MODEL)
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [MODEL])


@pytest.fixture
def good_blob(models):
    """The io_tiny parameters as a safetensors file's bytes (HF names)."""
    return safetensors_bytes(state(models[MODEL][0]))


def write(workdir, name, data: bytes) -> str:
    path = workdir / name
    path.write_bytes(data)
    make_readable(path)
    return str(path)


def expect_error(conn, sql, params, sqlstate, match=None):
    """sql fails with sqlstate (and match in the message); the connection still works."""
    with pytest.raises(psycopg.Error) as info:
        with conn.transaction():  # a savepoint when inside a transaction
            conn.execute(sql, params)
    assert info.value.sqlstate == sqlstate, str(info.value)
    if match:
        assert match in str(info.value), str(info.value)
    assert conn.execute("SELECT 1").fetchone()[0] == 1  # the backend is alive
    return info.value


# -- safetensors -----------------------------------------------------------------------

def bad_safetensors(blob: bytes) -> dict[str, tuple[bytes, str, str]]:
    """case -> (file bytes, SQLSTATE, words in the message)"""
    header, data = split_safetensors(blob)
    name, entry = "transformer.h.1.attn.c_attn.weight", header["transformer.h.1.attn.c_attn.weight"]
    begin, end = entry["data_offsets"]

    def edit(**changes):
        return join_safetensors({**header, name: {**entry, **changes}}, data)

    return {
        "empty": (b"", "XX001", "truncated"),
        "truncated": (blob[:-1000], "XX001", "truncated"),
        "header length beyond the file": (struct.pack("<Q", len(blob)) + blob[8:], "XX001", "header length"),
        "huge header length": (struct.pack("<Q", 1 << 40) + blob[8:], "22P03", "limit"),
        "offsets beyond the file": (edit(data_offsets=[len(data) + 8, len(data) + 8 + end - begin]),
                                    "XX001", name),
        "offsets of the wrong size": (edit(data_offsets=[begin, end - 4]), "22P03", name),
        "begin after end": (edit(data_offsets=[end, begin]), "22P03", "begin after end"),
        "overlapping tensors": (edit(data_offsets=[0, end - begin]), "22P03", "overlap"),
        "corrupt JSON": (join_safetensors(b'{"wte.weight": {"dtype": "F32", "sha', data), "22P03", "JSON"),
        "not an object": (join_safetensors(b"[1, 2]", data), "22P03", "not a JSON object"),
        "entry not an object": (join_safetensors({**header, name: [1]}, data), "22P03", name),
        "no dtype": (join_safetensors({**header, name: {"shape": entry["shape"],
                                                        "data_offsets": entry["data_offsets"]}}, data),
                     "22P03", "dtype"),
        "integer dtype": (edit(dtype="I32"), "0A000", "I32"),
        "negative dimension": (edit(shape=[-96, -288]), "22P03", "shape"),
        "fractional dimension": (edit(shape=[96.5, 288]), "22P03", "shape"),
        "nine dimensions": (edit(shape=[1] * 7 + [96, 288]), "0A000", "dimensions"),
        "empty tensor": (edit(shape=[0, 288], data_offsets=[begin, begin]), "0A000", "empty"),
        "NUL in the header": (join_safetensors(json.dumps(header).encode()[:-1] + b"\0}", data),
                              "22P03", "NUL"),
        "not UTF-8": (join_safetensors(json.dumps(header).encode().replace(b"wte", b"\xffte"), data),
                      "22P03", "JSON"),
    }


CASES_SAFETENSORS = [
    "empty", "truncated", "header length beyond the file", "huge header length", "offsets beyond the file",
    "offsets of the wrong size", "begin after end", "overlapping tensors", "corrupt JSON", "not an object",
    "entry not an object", "no dtype", "integer dtype", "negative dimension", "fractional dimension",
    "nine dimensions", "empty tensor", "NUL in the header", "not UTF-8"]


@pytest.mark.parametrize("case", CASES_SAFETENSORS)
def test_bad_safetensors(conn, imported, good_blob, workdir, case):
    data, sqlstate, words = bad_safetensors(good_blob)[case]
    path = write(workdir, "bad.safetensors", data)
    for sql, params in [("SELECT count(*) FROM llm_read_safetensors(%s)", [path]),
                        ("SELECT pg_llm_import_safetensors(%s, %s)", [path, MODEL])]:
        err = expect_error(conn, sql, params, sqlstate, words)
        assert path in str(err)
    assert snapshot(conn, MODEL) == imported


def test_wrong_names_and_shapes(conn, imported, models, workdir):
    """Valid files with the wrong tensors: named in the message, nothing changed."""
    good = state(models[MODEL][0])
    odd = make_hf_model(**{**CONFIGS[MODEL], "n_embd": 48})
    cases = {
        "unknown name": ({**good, "transformer.h.3.mlp.c_fc.weight": good["transformer.h.0.mlp.c_fc.weight"]},
                         "22023", "h.3.mlp.c_fc.weight"),
        "wrong shape": ({**good, "transformer.h.2.attn.c_proj.weight":
                        np.ascontiguousarray(good["transformer.h.2.attn.c_proj.weight"][:, :95])},
                       "22000", "h.2.attn.c_proj.weight"),
        "another model size": (state(odd), "22000", "expects"),
        "missing tensors": ({k: v for k, v in good.items() if not k.startswith("transformer.ln_f")},
                            "22000", "ln_f.bias"),
        "a parameter twice": ({**good, "wpe.weight": good["transformer.wpe.weight"]}, "42710", "twice"),
    }
    for case, (tensors, sqlstate, words) in cases.items():
        st = write(workdir, "names.safetensors", safetensors_bytes(tensors))
        expect_error(conn, "SELECT pg_llm_import_safetensors(%s, %s)", [st, MODEL], sqlstate, words)
        npz = workdir / "names.npz"
        np.savez(npz, **tensors)
        make_readable(npz)
        expect_error(conn, "SELECT pg_llm_import_npz(%s, %s)", [str(npz), MODEL], sqlstate, words)
        assert snapshot(conn, MODEL) == imported, case


def test_failed_import_inside_a_transaction(conn, imported, models, workdir):
    """A function is atomic: in a transaction, a failed import inside a savepoint
    leaves nothing behind either, and the transaction goes on."""
    tensors = state(models[MODEL][0])
    del tensors["transformer.ln_f.bias"]  # fails at the very end: llm_check_complete
    path = write(workdir, "incomplete.safetensors", safetensors_bytes(tensors))
    with conn.transaction():
        with pytest.raises(psycopg.errors.DataException, match="missing"):
            with conn.transaction():
                conn.execute("SELECT pg_llm_import_safetensors(%s, %s)", [path, MODEL])
        assert snapshot(conn, MODEL) == imported


def test_unknown_model_and_paths(conn, imported, models, workdir):
    _, folder = models[MODEL]
    st = str(folder / "model.safetensors")
    expect_error(conn, "SELECT pg_llm_import_safetensors(%s, 'io_nope')", [st], "42704", "llm_import_hf")
    expect_error(conn, "SELECT pg_llm_import_npz(%s, 'io_nope')", [st], "42704", "io_nope")
    expect_error(conn, "SELECT pg_llm_import_safetensors('model.safetensors', %s)", [MODEL], "42602",
                 "not absolute")
    expect_error(conn, "SELECT * FROM llm_read_npz('x.npz')", [], "42602", "not absolute")
    expect_error(conn, "SELECT pg_llm_import_safetensors(%s, %s)", [str(workdir / "nope.safetensors"), MODEL],
                 "58P01", "nope.safetensors")
    expect_error(conn, "SELECT * FROM llm_read_npz(%s)", [str(workdir / "nope.npz")], "58P01", "nope.npz")
    expect_error(conn, "SELECT * FROM llm_read_safetensors(%s)", [str(workdir)], "42809", "directory")
    expect_error(conn, "SELECT llm_import_hf(%s, %s)", [str(workdir / "nope"), MODEL], "58P01", "config.json")
    assert snapshot(conn, MODEL) == imported


# -- configs -------------------------------------------------------------------------

def test_hf_configs_we_do_not_compute_are_refused(conn, imported, models, workdir):
    model, folder = models[MODEL]
    config = json.loads((folder / "config.json").read_text())
    bad_dir = workdir / "bad_config"
    bad_dir.mkdir(exist_ok=True)
    (bad_dir / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    refused = [({"activation_function": "relu"}, "0A000", "relu"),
               ({"scale_attn_by_inverse_layer_idx": True}, "0A000", "attention"),
               ({"reorder_and_upcast_attn": True}, "0A000", "attention"),
               ({"scale_attn_weights": False}, "0A000", "attention"),
               ({"tie_word_embeddings": False}, "0A000", "tie_word_embeddings"),
               ({"model_type": "llama"}, "0A000", "llama"),
               ({"n_layer": "three"}, "22023", "n_layer")]
    differs = [({"n_embd": 48}, "22023", "n_embd 96 vs 48"),    # from the registered row
               ({"layer_norm_epsilon": 1e-3}, "22023", "layer_norm_eps")]
    for change, sqlstate, words in refused + differs:
        (bad_dir / "config.json").write_text(json.dumps({**config, **change}))
        make_readable(bad_dir)
        expect_error(conn, "SELECT llm_import_hf(%s, %s)", [str(bad_dir), MODEL], sqlstate, words)
        if (change, sqlstate, words) in refused:  # for a new model too
            expect_error(conn, "SELECT llm_import_hf(%s, 'io_new')", [str(bad_dir)], sqlstate, words)
        assert snapshot(conn, MODEL) == imported, change
    (bad_dir / "config.json").write_text("{not json")
    expect_error(conn, "SELECT llm_import_hf(%s, %s)", [str(bad_dir), MODEL], "22P02")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        hf.import_hf(conn, folder, MODEL, config={**config, "activation_function": "relu"}, progress=False)
    assert snapshot(conn, MODEL) == imported
    assert conn.execute("SELECT count(*) FROM llm_model_config WHERE model = 'io_new'").fetchone()[0] == 0


# -- npz --------------------------------------------------------------------------------

def npz_bytes(arrays: dict, compressed=False) -> bytes:
    import io
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def member_data_offset(blob: bytes, member: str) -> int:
    """Where a member's (stored or compressed) data starts in a zip."""
    import io
    info = zipfile.ZipFile(io.BytesIO(blob)).getinfo(member)
    name_len, extra_len = struct.unpack_from("<HH", blob, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x55]) + blob[at + 1:]


def zip_of(members: dict[str, bytes]) -> bytes:
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buf.getvalue()


def npy_bytes(array, header_override: str | None = None) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    raw = buf.getvalue()
    if header_override is None:
        return raw
    header = header_override.encode().ljust(118) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + raw[128:]


def bad_npz(good: dict) -> dict[str, tuple[bytes, str, str]]:
    stored, deflated = npz_bytes(good), npz_bytes(good, compressed=True)
    member = "transformer.h.1.mlp.c_fc.weight.npy"
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    return {
        "bad CRC (stored)": (flip(stored, member_data_offset(stored, member) + 500), "XX001", "CRC"),
        "damaged deflate data": (flip(deflated, member_data_offset(deflated, member) + 2000), "XX001", member),
        "truncated file": (stored[: len(stored) // 2], "22P03", "end of central directory"),
        "truncated member": (zip_of({"x.npy": npy_bytes(a)[:-8]}), "XX001", "truncated"),
        "bytes after the array": (zip_of({"x.npy": npy_bytes(a) + b"1234"}), "22P03", "after its array"),
        "fortran order": (npz_bytes({"x": np.asfortranarray(a)}), "0A000", "Fortran"),
        "integer dtype": (npz_bytes({"x": np.arange(4)}), "0A000", "<i8"),
        "structured dtype": (npz_bytes({"x": np.zeros(2, dtype=[("a", "<f4")])}), "0A000", "structured"),
        "bad magic": (zip_of({"x.npy": b"not a numpy file at all"}), "22P03", "magic"),
        "bad header": (zip_of({"x.npy": npy_bytes(a, "{'descr': '<f4', 'shape': (2, 3), 'oops': 1}")}),
                       "22P03", "oops"),
        "negative shape": (zip_of({"x.npy": npy_bytes(a, "{'descr': '<f4', 'fortran_order': False, "
                                                          "'shape': (-2, 3), }")}), "22P03", "dimension"),
        "not .npy": (zip_of({"x.txt": b"hello"}), "22P03", "x.txt"),
        "not a zip": (b"\0" * 100, "22P03", "end of central directory"),
        "damaged central directory": (flip(stored, stored.rfind(b"PK\x01\x02") + 3), "XX001",
                                      "central directory"),
    }


CASES_NPZ = ["bad CRC (stored)", "damaged deflate data", "truncated file", "truncated member",
             "bytes after the array", "fortran order", "integer dtype", "structured dtype", "bad magic",
             "bad header", "negative shape", "not .npy", "not a zip", "damaged central directory"]


@pytest.mark.parametrize("case", CASES_NPZ)
def test_bad_npz(conn, imported, models, workdir, case):
    data, sqlstate, words = bad_npz(state(models[MODEL][0]))[case]
    path = write(workdir, "bad.npz", data)
    for sql, params in [("SELECT count(*) FROM llm_read_npz(%s)", [path]),
                        ("SELECT pg_llm_import_npz(%s, %s)", [path, MODEL])]:
        err = expect_error(conn, sql, params, sqlstate, words)
        assert path in str(err)
    assert snapshot(conn, MODEL) == imported


# -- export errors ------------------------------------------------------------------------

def test_export_errors(conn, imported, workdir):
    expect_error(conn, "SELECT llm_export_hf('io_nope', %s)", [str(workdir / "x")], "42704", "io_nope")
    expect_error(conn, "SELECT llm_export_hf(%s, 'relative/dir')", [MODEL], "42602", "not absolute")
    expect_error(conn, "SELECT llm_export_hf(%s, '/nonexistent_pg_llm/a/b')", [MODEL], "58P01", "directory")
    with conn.transaction():   # an incomplete model is not exported
        conn.execute("DELETE FROM llm_param WHERE model = %s AND name = 'wpe.weight'", [MODEL])
        expect_error(conn, "SELECT pg_llm_export_safetensors(%s, %s)", [MODEL, str(workdir / "y.safetensors")],
                     "22000", "wpe.weight")
        raise psycopg.Rollback()  # undo the DELETE
    assert not (workdir / "y.safetensors").exists()
    assert snapshot(conn, MODEL) == imported


# -- privileges ------------------------------------------------------------------------------

@pytest.fixture
def plain_role(conn):
    conn.execute("DROP ROLE IF EXISTS llm_io_test_user")
    conn.execute("CREATE ROLE llm_io_test_user")
    yield "llm_io_test_user"
    conn.execute("RESET ROLE")
    conn.execute("DROP ROLE llm_io_test_user")


def test_server_files_need_the_copy_privileges(conn, models, workdir, plain_role):
    st = str(models[MODEL][1] / "model.safetensors")
    conn.execute(f"SET ROLE {plain_role}")
    for sql in ["SELECT count(*) FROM llm_read_safetensors(%s)", "SELECT count(*) FROM llm_read_npz(%s)",
                "SELECT llm_read_text_file(%s)"]:
        expect_error(conn, sql, [st], "42501", "pg_read_server_files")
    expect_error(conn, "SELECT llm_write_text_file(%s, 'x')", [str(workdir / "t.txt")], "42501",
                 "pg_write_server_files")
    expect_error(conn, "SELECT llm_write_safetensors(%s, 'x')", [str(workdir / "t.st")], "42501",
                 "pg_write_server_files")
    conn.execute("RESET ROLE")
    conn.execute(f"GRANT pg_read_server_files, pg_write_server_files TO {plain_role}")
    conn.execute(f"SET ROLE {plain_role}")
    assert conn.execute("SELECT count(*) FROM llm_read_safetensors(%s)", [st]).fetchone()[0] == 40
    assert conn.execute("SELECT llm_write_text_file(%s, 'x')", [str(workdir / "t.txt")]).fetchone()[0] == 1


# -- fuzz --------------------------------------------------------------------------------------

def damage(blob: bytes, rng: random.Random) -> bytes:
    """Truncate, flip bytes, or overwrite a little-endian integer with a wild value."""
    kind = rng.choice(["truncate", "flip", "int"])
    if kind == "truncate":
        return blob[:rng.randrange(len(blob))]
    blob = bytearray(blob)
    at = rng.randrange(len(blob) - 8)
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    else:
        wild = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, len(blob), 1 << 62])
        blob[at:at + 8] = struct.pack("<Q", wild % (1 << 64))
    return bytes(blob)


@pytest.mark.parametrize("fmt", ["safetensors", "npz-stored", "npz-deflated"])
def test_fuzzed_files_never_crash(conn, workdir, fmt):
    arrays = {"a": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b.c": np.ones(5, np.float16),
              "d": np.linspace(-1, 1, 7)}
    if fmt == "safetensors":
        good, reader = safetensors_bytes(arrays), "llm_read_safetensors"
    else:
        good, reader = npz_bytes(arrays, compressed=fmt == "npz-deflated"), "llm_read_npz"
    rng = random.Random(fmt)
    outcomes = {}
    for i in range(300):
        path = write(workdir, f"fuzz_{fmt}", damage(good, rng))
        try:
            rows = conn.execute(f"SELECT name, data FROM {reader}(%s)", [path]).fetchall()
            outcomes["ok"] = outcomes.get("ok", 0) + 1
            assert all(d.dtype == np.float32 for _, d in rows)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as err:
            assert err.sqlstate not in ("XX000", None), f"case {i}: {err}"
            outcomes[err.sqlstate] = outcomes.get(err.sqlstate, 0) + 1
        assert not conn.closed and conn.execute("SELECT 1").fetchone()[0] == 1
    assert len(outcomes) > 1, outcomes
