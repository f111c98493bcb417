"""Fuzz the checkpoint readers and imports with damaged files: safetensors
(llm_read_safetensors, pg_llm_import_safetensors), npz (llm_read_npz,
pg_llm_import_npz) and HuggingFace folders (llm_import_hf: config.json and
model.safetensors), plus paths that are not regular files.

Every answer is judged against a reference reader (safetensors_reference.py,
npz_reference.py): the right tensors, or an ERROR with a fitting SQLSTATE.
A failed import must leave llm_param and llm_model_config exactly as they
were (a checksum of the rows before and after).
"""
from __future__ import annotations

import json
import os
import re
import threading
import time

import numpy as np
import pytest
import npz_reference as npzref
import safetensors_reference as stref
from fuzz_harness import Tally, same_values
from generators import cases

MODEL = "fuzz_tiny"                    # registered, with parameters
NEW_MODEL = "fuzz_new"                 # never left behind
CONFIG = dict(n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=16)
NPZ_BROKEN = {"22P03", "XX001", "0A000", "22021"}
# An import's own checks: unknown name, wrong shape or missing tensor, a tensor twice.
IMPORT_CHECKS = {"22023", "22000", "42710"}

# The extension's functions this file fuzzes (test_fuzz_coverage.py checks that every one is somewhere).
COVERS = {"llm_read_safetensors", "llm_read_npz", "llm_read_text_file", "pg_llm_import_safetensors",
          "pg_llm_import_npz", "llm_import_hf", "llm_import_tensors", "llm_hf_param_name", "llm_register_hf_config",
          "llm_hf_config_int", "llm_import_require_model", "llm_check_complete", "llm_export_hf"}


def write(directory, name: str, data: bytes) -> str:
    path = directory / name
    path.write_bytes(data)
    path.chmod(0o644)
    return str(path)


def snapshot(db, model=MODEL):
    """The model's config row (with its version), a checksum of its llm_param rows,
    and how many models there are."""
    return db.run("""
        SELECT (SELECT row(c.*)::text FROM llm_model_config c WHERE c.model = %(m)s),
               (SELECT md5(string_agg(p.name || ':' || md5(llm_bytea(p.data)) || ':' || p.step || ':'
                                      || coalesce(md5(llm_bytea(p.grad)), '-'), ',' ORDER BY p.name))
                FROM llm_param p WHERE p.model = %(m)s),
               (SELECT count(*) FROM llm_model_config)""", {"m": model}).rows[0]


def params_checksum(db, model=MODEL):
    return snapshot(db, model)[1]


@pytest.fixture(scope="module")
def tiny(db_url, server_dir):
    """fuzz_tiny registered and initialised; its HF folder on the server; its tensors."""
    from fuzz_harness import FuzzDB
    db = FuzzDB(db_url)
    db.run("DELETE FROM llm_model_config WHERE model IN (%s, %s)", [MODEL, NEW_MODEL])
    db.run("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
           "VALUES (%(model)s, %(n_layer)s, %(n_head)s, %(n_embd)s, %(n_positions)s, %(vocab_size)s)",
           dict(CONFIG, model=MODEL))
    assert db.run("SELECT llm_init(%s, 7)", [MODEL]).ok
    folder = server_dir / "baseline"
    out = db.run("SELECT llm_export_hf(%s, %s)", [MODEL, str(folder)])
    assert out.ok, out.message
    blob = (folder / "model.safetensors").read_bytes()
    tensors = stref.read(blob).tensors
    shapes = {name: tuple(shape) for name, shape in db.run("SELECT name, shape FROM llm_param_shapes(%s)",
                                                            [MODEL]).rows}
    yield {"folder": folder, "blob": blob, "tensors": tensors, "shapes": shapes,
           "config": json.loads((folder / "config.json").read_text()), "checksum": params_checksum(db)}
    db.run("DELETE FROM llm_model_config WHERE model IN (%s, %s)", [MODEL, NEW_MODEL])
    db.close()


# -- llm_read_safetensors ----------------------------------------------------------------

def judge_read(tally, what, out, expect: stref.Expect):
    """A reader's rows (name, dtype, shape, data) against the reference."""
    if expect.tensors is None:
        tally.expect_error(what, out, expect.errors, expect.why)
        return
    if expect.either and not out.ok:
        tally.expect_error(what, out, expect.errors, expect.why)
        return
    if not tally.expect_ok(what, out, "the file is valid"):
        return
    got = {name: (list(shape), data) for name, _dtype, shape, data in out.rows}
    if set(got) != set(expect.tensors):
        tally.violation("read the wrong tensors", what, f"got {sorted(got)}, expected {sorted(expect.tensors)}")
        return
    for name, want in expect.tensors.items():
        shape, data = got[name]
        if shape != list(want.shape) or not same_values(data, want):
            tally.violation("read wrong values (a silent misread)", what,
                            f"{name}: got {shape} {data.ravel()[:6]!r}, "
                            f"expected {list(want.shape)} {want.ravel()[:6]!r}")
            return


def test_read_safetensors(db, server_dir):
    tally = Tally("llm_read_safetensors (mutated files)")
    for rng in cases(1200, seed=11):
        blob, kind = stref.mutate(rng, stref.base_tensors(rng))
        path = write(server_dir, "fuzz.safetensors", blob)
        out = tally.record(db.run("SELECT name, dtype, shape, data FROM llm_read_safetensors(%s)", [path]),
                           (kind, blob))
        judge_read(tally, (kind, blob), out, stref.read(blob))
    tally.finish(db)


# -- llm_read_npz ------------------------------------------------------------------------

def test_read_npz_crafted_members(db, server_dir):
    """Archives of .npy members put together from good and bad parts."""
    tally = Tally("llm_read_npz (crafted .npy members)")
    for rng in cases(1200, seed=12):
        members = [npzref.crafted_member(rng, i) for i in range(rng.randint(1, 3))]
        blob = npzref.zip_of(members, compressed=rng.random() < 0.4)
        path = write(server_dir, "fuzz.npz", blob)
        what = [m.blob for m in members]
        out = tally.record(db.run("SELECT name, dtype, shape, data FROM llm_read_npz(%s)", [path]), what)
        errors = set().union(*(m.errors for m in members))
        if errors:
            tally.expect_error(what, out, errors)
        elif tally.expect_ok(what, out, "every member is valid"):
            for (name, _dtype, shape, data), m in zip(out.rows, members):
                if name != m.name[:-4] or list(shape) != list(m.values.shape) or not same_values(data, m.values):
                    tally.violation("read wrong values (a silent misread)", what,
                                    f"{name} {shape} {data.ravel()[:6]!r}, expected {m.name} {m.values.ravel()[:6]!r}")
                    break
    tally.finish(db)


def test_read_npz_damaged(db, server_dir):
    """numpy's own archives (stored and deflated), damaged blindly: refused, or
    read as exactly the arrays that were saved (every member is CRC-checked)."""
    tally = Tally("llm_read_npz (damaged archives)")
    for rng in cases(1000, seed=13):
        arrays = npzref.blind_arrays(rng)
        blob = stref.damage(rng, npzref.npz_bytes(arrays, compressed=rng.random() < 0.5))
        path = write(server_dir, "fuzz.npz", blob)
        out = tally.record(db.run("SELECT name, data FROM llm_read_npz(%s)", [path]), blob)
        if not out.ok:
            tally.expect_error(blob, out, NPZ_BROKEN)
            continue
        want = [np.asarray(a, np.float32).reshape(a.shape or (1,)) for a in arrays.values()]
        got = [data for _name, data in out.rows]
        if len(got) != len(want) or not all(g.shape == w.shape and same_values(g, w) for g, w in zip(got, want)):
            tally.violation("a damaged archive read as other values", blob,
                            f"got {[g.ravel()[:4] for g in got]}, saved {[w.ravel()[:4] for w in want]}")
    tally.finish(db)


# -- imports -------------------------------------------------------------------------------

def param_name(hf_name: str) -> str | None:
    """llm_hf_param_name: the llm_param name of a tensor in an HF checkpoint."""
    name = re.sub(r"^transformer\.", "", hf_name)
    if name == "lm_head.weight" or re.search(r"(^|\.)attn\.(bias|masked_bias)$", name):
        return None
    return name


def import_expectation(tensors: dict, shapes: dict):
    """For readable tensors: (SQLSTATEs that fit, or None if the import must succeed,
    and then the llm_param contents name -> values)."""
    errors, params = set(), {}
    for hf_name, values in tensors.items():
        name = param_name(hf_name)
        if name is None:
            continue
        if name not in shapes:
            errors.add("22023")
        elif tuple(values.shape) != shapes[name]:
            errors.add("22000")
        elif name in params:
            errors.add("42710")
        params[name] = values
    if set(shapes) - set(params):
        errors.add("22000")
    return errors or None, params


def check_import(tally, db, what, out, before, expect, params, restore, why=""):
    """A failed import changed nothing; a successful one stored exactly the file's tensors.
    expect: None (must succeed), a set of SQLSTATEs (must fail), or ("either", SQLSTATEs)."""
    if isinstance(expect, tuple):
        if not out.ok:
            tally.expect_error(what, out, expect[1], why)
    elif expect is not None:
        tally.expect_error(what, out, expect, why)
    else:
        tally.expect_ok(what, out, "a valid checkpoint of the model")
    if not out.ok:
        after = snapshot(db)
        if after != before:
            tally.violation("a failed import changed llm_param or llm_model_config", what,
                            f"before {before}, after {after}")
        return
    if params is None:          # (accepted a file it should have refused: recorded above)
        restore()
        return
    rows = dict(db.run("SELECT name, data FROM llm_param WHERE model = %s", [MODEL]).rows)
    if set(rows) != set(params) or not all(same_values(rows[n], params[n]) for n in params):
        tally.violation("an import stored other values than the file's", what,
                        f"stored {sorted(rows)[:3]}..., file {sorted(params)[:3]}...")
    restore()


def test_import_safetensors(db, server_dir, tiny):
    tally = Tally("pg_llm_import_safetensors (mutated model)")

    def restore():
        assert db.run("SELECT pg_llm_import_safetensors(%s, %s)",
                      [str(tiny["folder"] / "model.safetensors"), MODEL]).ok
        assert params_checksum(db) == tiny["checksum"]

    for rng in cases(300, seed=14):
        tensors = {n: ("F32", v.shape, v.astype("<f4").tobytes()) for n, v in tiny["tensors"].items()}
        if rng.random() < 0.3:      # names as other exporters write them, or names of no parameter
            old = rng.choice(list(tensors))
            new = rng.choice(["transformer." + old, "lm_head.weight", "h.0.attn.bias", "h.0.attn.masked_bias",
                              old.replace("h.0", "h.1"), old.upper(), "transformer.transformer." + old])
            tensors[new] = tensors.pop(old) if rng.random() < 0.7 else tensors[old]
        blob, kind = stref.mutate(rng, tensors)
        path = write(server_dir, "import.safetensors", blob)
        read = stref.read(blob)
        if read.tensors is None:
            expect, params = read.errors, None
            loose = stref.read(blob, coverage=False)    # the import's own checks may come first
            if loose.tensors is not None:
                expect = expect | (import_expectation(loose.tensors, tiny["shapes"])[0] or set())
        else:
            expect, params = import_expectation(read.tensors, tiny["shapes"])
            if read.either:
                expect = ("either", (expect or set()) | read.errors)
        before = snapshot(db)
        out = tally.record(db.run("SELECT pg_llm_import_safetensors(%s, %s)", [path, MODEL]), (kind, blob))
        check_import(tally, db, (kind, blob), out, before, expect, params, restore, read.why)
    tally.finish(db)


def test_import_npz(db, server_dir, tiny):
    tally = Tally("pg_llm_import_npz (damaged model)")

    def restore():
        assert db.run("SELECT pg_llm_import_npz(%s, %s)", [good_path, MODEL]).ok
        assert params_checksum(db) == tiny["checksum"]

    arrays = {n: v for n, v in tiny["tensors"].items()}
    good_path = write(server_dir, "good.npz", npzref.npz_bytes(arrays, compressed=False))
    for rng in cases(200, seed=15):
        blob = stref.damage(rng, npzref.npz_bytes(arrays, compressed=rng.random() < 0.5))
        path = write(server_dir, "import.npz", blob)
        before = snapshot(db)
        out = tally.record(db.run("SELECT pg_llm_import_npz(%s, %s)", [path, MODEL]), blob)
        # refused (damaged, or a damaged name), or every array intact
        check_import(tally, db, blob, out, before, None if out.ok else NPZ_BROKEN | IMPORT_CHECKS,
                     arrays, restore)
    tally.finish(db)


# -- HuggingFace folders ------------------------------------------------------------------

def config_mutation(rng, config: dict, existing: bool):
    """(config.json bytes, expectation): "ok", a set of SQLSTATEs, or "either"."""
    c = dict(config)
    r = rng.random()
    if r < 0.2:      # changes that do not matter
        choice = rng.choice(["extra key", "dropout", "reorder", "compact", "null eps", "n_ctx", "null model_type"])
        if choice == "extra key":
            c[rng.choice(["foo", "transformers_version", "\u00e9"])] = rng.choice([1, "x", None, [1, {"a": 2}]])
        elif choice == "dropout":
            c["attn_pdrop"] = rng.random()
        elif choice == "reorder":
            c = dict(reversed(list(c.items())))
        elif choice == "compact":
            return json.dumps(c, separators=(",", ":")).encode(), "ok"
        elif choice == "null eps":
            c.pop("layer_norm_epsilon")
        elif choice == "n_ctx":
            c.pop("n_positions")
        else:
            c["model_type"] = None
        return json.dumps(c, indent=rng.choice([None, 2])).encode(), "ok"
    if r < 0.4:      # what pg_llm does not compute
        key, value = rng.choice([("model_type", "llama"), ("model_type", "GPT2"), ("model_type", 2),
                                 ("activation_function", "relu"), ("activation_function", "gelu"),
                                 ("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
                                 ("scale_attn_weights", False), ("add_cross_attention", True),
                                 ("tie_word_embeddings", False)])
        c[key] = value
        return json.dumps(c).encode(), {"0A000"}
    if r < 0.55:     # settings of the wrong type
        key = rng.choice(["n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "n_inner"])
        c[key] = rng.choice(["3", 3.5, -1, True, [], {}, 10**10, "", 1e30])
        return json.dumps(c).encode(), {"22023"}
    if r < 0.65:     # the epsilon
        value = rng.choice(["1e-5", None, [1e-5], 0, -1e-5, 1e999, 1e-50, 1e-3])
        text = json.dumps(dict(c, layer_norm_epsilon="EPS")).replace('"EPS"', "1e999" if value == 1e999 else
                                                                       json.dumps(value))
        if isinstance(value, (str, list)) or value is None:
            return text.encode(), {"22023"}
        if value in (1e999, 1e-50):
            return text.encode(), {"22003"}
        if value <= 0:
            return text.encode(), {"22023", "23514"}
        return text.encode(), {"22023"} if existing and value != config["layer_norm_epsilon"] else "ok"
    if r < 0.8:      # other shapes than the tensors have
        key = rng.choice(["n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "n_inner"])
        c[key] = rng.choice([0, 1, 2, 3, 4, 5, 16, 32, 100000])
        now = config.get(key) if config.get(key) is not None else 4 * config["n_embd"]
        if c[key] == now:
            return json.dumps(c).encode(), "ok"
        return json.dumps(c).encode(), "either" if not existing else {"22023", "23514"}
    # not JSON, or not an object
    text = json.dumps(c)
    broken = rng.choice([text[:-1], text + ",", text.replace('"', "'"), "", "null", "[]", "1", '"x"',
                         text.replace(":", ": NaN, \"x\":", 1), "\ufeff" + text, text + "\0", "{" * 5000])
    raw = broken.encode()
    if rng.random() < 0.2:
        raw = raw[:5] + b"\xff\xfe" + raw[5:]
        return raw, {"22021", "22P02", "22P03"}
    if broken in ("null", "[]", "1", '"x"'):
        return raw, {"22023"}
    return raw, {"22P02", "22P03", "22021", "54000", "54001"}


def test_import_hf(db, server_dir, tiny):
    """config.json changed (and sometimes model.safetensors damaged), imported
    into the registered model or under a new name."""
    tally = Tally("llm_import_hf (mutated folders)")
    folder = server_dir / "hf"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o777)

    def restore():
        db.run("DELETE FROM llm_model_config WHERE model = %s", [NEW_MODEL])
        assert db.run("SELECT pg_llm_import_safetensors(%s, %s)",
                      [str(tiny["folder"] / "model.safetensors"), MODEL]).ok

    for rng in cases(250, seed=16):
        existing = rng.random() < 0.6
        model = MODEL if existing else NEW_MODEL
        config, expect = config_mutation(rng, tiny["config"], existing)
        blob = tiny["blob"]
        read = stref.Expect(tensors=tiny["tensors"])
        if rng.random() < 0.25:
            blob, _kind = stref.mutate(rng, {n: ("F32", v.shape, v.astype("<f4").tobytes())
                                             for n, v in tiny["tensors"].items()})
            read = stref.read(blob)
        write(folder, "config.json", config)
        write(folder, "model.safetensors", blob)
        if read.tensors is None:
            file_errors = read.errors
            loose = stref.read(blob, coverage=False)
            if loose.tensors is not None:
                file_errors = file_errors | (import_expectation(loose.tensors, tiny["shapes"])[0] or set())
        else:
            file_errors, _params = import_expectation(read.tensors, tiny["shapes"])
        if expect == "ok" and file_errors:
            expect = file_errors
        elif isinstance(expect, set) and file_errors:
            expect = expect | file_errors
        before = snapshot(db)
        what = (model, config, blob if blob is not tiny["blob"] else "(the good model.safetensors)")
        out = tally.record(db.run("SELECT llm_import_hf(%s, %s)", [str(folder), model]), what)
        if isinstance(expect, set):
            tally.expect_error(what, out, expect)
        elif expect == "ok":
            tally.expect_ok(what, out, "a good folder")
        elif not out.ok:
            tally.expect_error(what, out, {"22000", "22023", "23514", "22003"} | (file_errors or set()))
        if not out.ok and snapshot(db) != before:
            tally.violation("a failed import changed llm_param or llm_model_config", what, "")
        if out.ok:
            restore()
    tally.finish(db)


# -- paths that are not regular files --------------------------------------------------------

READERS = ["SELECT count(*) FROM llm_read_safetensors(%s)", "SELECT count(*) FROM llm_read_npz(%s)",
           "SELECT length(llm_read_text_file(%s))", "SELECT pg_llm_import_safetensors(%s, 'fuzz_tiny')",
           "SELECT pg_llm_import_npz(%s, 'fuzz_tiny')"]
# A path that is no regular file: refused clearly (what it is, or that it does not exist).
NOT_A_FILE = {"42809", "22023", "0A000", "58000", "58P01", "42602"}


def run_with_watchdog(db, sql, params, fifo, seconds=1.0):
    """Run sql; if it is still blocked on `fifo` after `seconds`, open the FIFO's
    other end so that it can go on -- and say that it hung."""
    hung = threading.Event()

    def unblock():
        while not done.is_set():
            hung.set()
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            time.sleep(0.2)

    done = threading.Event()
    timer = threading.Timer(seconds, unblock)
    timer.start()
    try:
        out = db.run(sql, params)
    finally:
        done.set()
        timer.cancel()
    return out, hung.is_set()


def test_paths_that_are_not_regular_files(db, server_dir, tiny):
    tally = Tally("server files: FIFOs, devices, /proc, directories")
    fifo = server_dir / "fifo"
    os.mkfifo(fifo, 0o666)
    os.chmod(fifo, 0o666)
    loop = server_dir / "loop"
    os.symlink(loop, loop)
    paths = {str(fifo): NOT_A_FILE, "/dev/zero": NOT_A_FILE, "/dev/null": NOT_A_FILE,
             str(server_dir): NOT_A_FILE, str(loop): NOT_A_FILE, str(server_dir / "nope"): {"58P01"},
             "relative/path": {"42602"}, "": {"42602"}, "/" + "x" * 5000: NOT_A_FILE | {"58P03", "54000"},
             "/proc/self/status": "text"}
    before = snapshot(db)
    for path, expect in paths.items():
        for sql in READERS:
            what = (sql, path)
            out, hung = run_with_watchdog(db, sql, [path], str(fifo))
            tally.record(out, what)
            if hung:
                tally.violation("a read of a FIFO hung (no cancel reaches it)", what, "")
            elif expect == "text":      # a /proc file: regular, st_size 0, but it has content
                if "read_text_file" in sql:
                    if out.ok:
                        if not out.value:
                            tally.violation("a /proc file read as empty", what, "")
                    else:
                        tally.expect_error(what, out, NOT_A_FILE | {"54000"})
                else:
                    tally.expect_error(what, out, {"22P03", "XX001", "0A000"} | NOT_A_FILE)
            else:
                tally.expect_error(what, out, expect)
    if snapshot(db) != before:
        tally.violation("a failed import changed llm_param", "special files", "")
    tally.finish(db)
