"""Defects an attacker / careless-user campaign found (issue 7), one test each:
silent misreads, privilege bypasses through the weight cache, crashes, hangs,
stale weights, leftover files, unclear errors, search_path hijacks.

Every test here failed on the code before its fix.
"""
import json
import os
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest

import pg_llm_lab
from hf_checkpoints import make_readable, workdir  # noqa: F401 (fixture)

MODEL = "h_tiny"          # a tiny GPT-2, made with llm_init (no torch needed)
OTHER = "h_other"
TOKENS = [1, 2, 3]


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def expect_error(conn, sql, params, sqlstate, *words):
    """sql fails with sqlstate and every word in the message; the backend is alive."""
    with pytest.raises(psycopg.Error) as info:
        with conn.transaction():  # a savepoint inside a transaction
            conn.execute(sql, params)
    assert info.value.sqlstate == sqlstate, str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert conn.execute("SELECT 1").fetchone()[0] == 1
    return info.value


def write(directory: Path, name: str, data: bytes) -> str:
    path = directory / name
    path.write_bytes(data)
    make_readable(path)
    return str(path)


def new_model(conn, name, seed=1, n_head=2, n_positions=16):
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                 " VALUES (%s, 1, %s, 8, %s, 11)", [name, n_head, n_positions])
    conn.execute("SELECT llm_init(%s, %s)", [name, seed])


@pytest.fixture
def tiny(conn):
    new_model(conn, MODEL)
    new_model(conn, OTHER, seed=2)
    # shared: row-level security lets every role see them (what it may SELECT is the test's)
    conn.execute(r"UPDATE llm_model_config SET shared = true WHERE model LIKE 'h\_%'")
    yield MODEL
    conn.execute("RESET ROLE")
    conn.execute(r"DELETE FROM llm_model_config WHERE model LIKE 'h\_%'")


@pytest.fixture
def role(conn):
    """An ordinary role, dropped (with whatever it was granted or owns) afterwards."""
    name = "llm_hardening_user"
    if q(conn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", name):
        conn.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE {name}")
    conn.execute(f"CREATE ROLE {name}")
    yield name
    conn.execute("RESET ROLE")
    conn.execute(f"DROP OWNED BY {name}")
    conn.execute(f"DROP ROLE {name}")


# ---- 1. safetensors: the data section is exactly what the offsets cover -------------

def safetensors_file(tensors: dict, padding=7, header_len_delta=0) -> bytes:
    """A safetensors file by hand: the header padded with `padding` spaces,
    its length field off by header_len_delta."""
    header, data, offset = {}, b"", 0
    for name, array in tensors.items():
        raw = array.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    raw_header = json.dumps(header).encode() + b" " * padding
    return struct.pack("<Q", len(raw_header) + header_len_delta) + raw_header + data


def test_safetensors_reference_file_reads(conn, workdir):
    path = write(workdir, "ok.safetensors", safetensors_file({"x": np.arange(1, 9, dtype=np.float32)}))
    name, data = conn.execute("SELECT name, data FROM llm_read_safetensors(%s)", [path]).fetchone()
    assert name == "x" and data.tolist() == list(range(1, 9))


@pytest.mark.parametrize("short_by", range(1, 8))
def test_safetensors_header_length_too_short_is_refused(conn, workdir, short_by):
    """The header still parses (it ends in its padding) but the data would start
    early: the offsets no longer cover the data section."""
    from safetensors.numpy import load
    blob = safetensors_file({"x": np.arange(1, 9, dtype=np.float32)}, header_len_delta=-short_by)
    with pytest.raises(Exception):  # the reference implementation refuses it too
        load(blob)
    path = write(workdir, "short.safetensors", blob)
    expect_error(conn, "SELECT * FROM llm_read_safetensors(%s)", [path], "22P03", path,
                 f"bytes [32, {32 + short_by}) of the {32 + short_by}-byte data section")


def test_safetensors_gaps_and_trailing_bytes_are_refused(conn, workdir):
    x, y = np.ones(2, np.float32), np.zeros(3, np.float32)
    good = safetensors_file({"x": x, "y": y})
    n = struct.unpack_from("<Q", good)[0]
    header = json.loads(good[8:8 + n])
    data = good[8 + n:]

    def with_header(h, tail=b""):
        raw = json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + data + tail

    cases = {
        "trailing bytes": (with_header(header, b"\0" * 4), "[20, 24) of the 24-byte"),
        "a gap before the first tensor": (
            with_header({"x": {**header["x"], "data_offsets": [4, 12]},
                         "y": {**header["y"], "data_offsets": [12, 24]}}, b"\0" * 4), "[0, 4) of the 24-byte"),
        "a gap between tensors": (
            with_header({"x": header["x"], "y": {**header["y"], "data_offsets": [12, 24]}}, b"\0" * 4),
            "[8, 12) of the 24-byte"),
    }
    for case, (blob, words) in cases.items():
        path = write(workdir, "gap.safetensors", blob)
        expect_error(conn, "SELECT * FROM llm_read_safetensors(%s)", [path], "22P03", path, words)


# ---- 2. the weight cache serves no one who could not SELECT the weights -----------------

def test_cache_checks_select_privilege_on_llm_param(conn, tiny, role):
    conn.execute(f"GRANT SELECT ON llm_model_config TO {role}")
    conn.execute(f"SET ROLE {role}")
    uncached = expect_error(conn, "SELECT llm_logits(%s, %s)", [MODEL, TOKENS], "42501")
    conn.execute("RESET ROLE")
    q(conn, "SELECT llm_logits(%s, %s)", MODEL, TOKENS)           # the superuser fills the cache
    assert q(conn, "SELECT count(*) FROM llm_model_cache() WHERE model = %s", MODEL) == 1
    conn.execute(f"SET ROLE {role}")
    cached = expect_error(conn, "SELECT llm_logits(%s, %s)", [MODEL, TOKENS], "42501", "llm_param")
    assert cached.diag.message_primary == uncached.diag.message_primary
    expect_error(conn, "SELECT llm_generate_tokens(%s, %s, 2, 0)", [MODEL, TOKENS], "42501")
    expect_error(conn, "SELECT llm_loss(%s, %s, %s)", [MODEL, TOKENS, [2, 3, -100]], "42501")


def test_cache_accepts_column_privileges(conn, tiny, role):
    want = q(conn, "SELECT llm_logits(%s, %s)", MODEL, TOKENS)
    conn.execute(f"GRANT SELECT ON llm_model_config TO {role}")
    conn.execute(f"GRANT SELECT (model, name) ON llm_param TO {role}")
    conn.execute(f"SET ROLE {role}")
    expect_error(conn, "SELECT llm_logits(%s, %s)", [MODEL, TOKENS], "42501", "llm_param")
    conn.execute("RESET ROLE")
    conn.execute(f"GRANT SELECT (data) ON llm_param TO {role}")  # what the cache reads
    conn.execute(f"SET ROLE {role}")
    np.testing.assert_array_equal(q(conn, "SELECT llm_logits(%s, %s)", MODEL, TOKENS), want)


# ---- 3. shapes whose product overflows ---------------------------------------------------

@pytest.mark.parametrize("shape", [[-1, 65536, 65536, 65536, 65536], [65536, 65536, 65536, 65536],
                                   [-1, 2147483647, 2147483647, 2147483647]])
def test_reshape_overflow_is_out_of_range(conn, shape):
    expect_error(conn, "SELECT llm_reshape('[1]', %s)", [shape], "22003",
                 "[" + ",".join(map(str, shape)) + "]")


def test_param_shapes_of_a_huge_config_do_not_wrap(conn):
    conn.execute("DELETE FROM llm_model_config WHERE model = 'h_huge'")
    try:
        conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                     " VALUES ('h_huge', 1, 1, 1000000000, 1, 1)")
        with pytest.raises(psycopg.Error) as info:
            rows = conn.execute("SELECT name, shape FROM llm_param_shapes('h_huge')").fetchall()
            assert all(d > 0 for _, shape in rows for d in shape), rows  # before: [1000000000,-1294967296]
        assert info.value.sqlstate in ("22003", "54000"), str(info.value)
        assert "h_huge" in str(info.value)
    finally:
        conn.execute("DELETE FROM llm_model_config WHERE model = 'h_huge'")


# ---- 4. only regular files are read -------------------------------------------------------

def test_a_fifo_is_refused_not_waited_on(db_url, workdir):
    fifo = workdir / "pipe"
    if not fifo.exists():
        os.mkfifo(fifo)
    fifo.chmod(0o666)
    outcome = {}

    def read():
        try:
            with pg_llm_lab.connect(db_url) as other:
                other.execute("SET statement_timeout = '2s'")
                other.execute("SELECT llm_read_text_file(%s)", [str(fifo)])
            outcome["result"] = "read"
        except psycopg.Error as err:
            outcome["result"] = err

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the backend before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("llm_read_text_file waited on a FIFO past statement_timeout")
    err = outcome["result"]
    assert isinstance(err, psycopg.Error) and err.sqlstate == "42809", err
    assert str(fifo) in str(err) and "not a regular file" in str(err)


@pytest.mark.parametrize("reader", ["SELECT llm_read_text_file(%s)", "SELECT * FROM llm_read_safetensors(%s)",
                                    "SELECT * FROM llm_read_npz(%s)"])
def test_devices_are_refused(conn, reader):
    expect_error(conn, reader, ["/dev/zero"], "42809", "/dev/zero", "not a regular file")


# ---- 5. a changed configuration is a new version, and must fit the parameters ------------------

def test_config_change_reaches_a_backend_with_the_model_cached(conn, tiny, db_url):
    with pg_llm_lab.connect(db_url) as other:
        before = q(other, "SELECT llm_logits(%s, %s)", MODEL, TOKENS)     # cached there
        version = q(conn, "SELECT version FROM llm_model_config WHERE model = %s", MODEL)
        conn.execute("UPDATE llm_model_config SET n_head = 1 WHERE model = %s", [MODEL])
        assert q(conn, "SELECT version FROM llm_model_config WHERE model = %s", MODEL) > version
        after = q(other, "SELECT llm_logits(%s, %s)", MODEL, TOKENS)
        other.execute("SELECT llm_model_cache_clear()")
        fresh = q(other, "SELECT llm_logits(%s, %s)", MODEL, TOKENS)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, fresh)


def test_config_version_cannot_be_set_by_hand(conn, tiny):
    version = q(conn, "SELECT version FROM llm_model_config WHERE model = %s", MODEL)
    conn.execute("UPDATE llm_param SET data = llm_scale(data, 2) WHERE model = %s AND name = 'ln_f.weight'",
                 [MODEL])
    conn.execute("UPDATE llm_model_config SET version = %s WHERE model = %s", [version, MODEL])
    assert q(conn, "SELECT version FROM llm_model_config WHERE model = %s", MODEL) > version


def test_config_change_must_fit_the_stored_parameters(conn, tiny):
    expect_error(conn, "UPDATE llm_model_config SET n_positions = 32 WHERE model = %s", [MODEL],
                 "22000", "wpe.weight", "{16,8}", "{32,8}")
    expect_error(conn, "UPDATE llm_model_config SET n_layer = 2 WHERE model = %s", [MODEL],
                 "22000", "h.1.")
    expect_error(conn, "UPDATE llm_model_config SET n_inner = 16 WHERE model = %s", [MODEL],
                 "22000", "h.0.mlp.c_fc.weight")
    # a model without parameters may change freely; a rename keeps them
    conn.execute("DELETE FROM llm_param WHERE model = %s", [OTHER])
    conn.execute("UPDATE llm_model_config SET n_positions = 32, n_layer = 2 WHERE model = %s", [OTHER])
    conn.execute("UPDATE llm_model_config SET model = 'h_renamed' WHERE model = %s", [MODEL])
    assert q(conn, "SELECT count(*) FROM llm_param WHERE model = 'h_renamed'") == 16
    assert q(conn, "SELECT llm_shape(llm_logits('h_renamed', %s))", TOKENS) == [3, 11]


# ---- 6. exports clean up what killed backends left -----------------------------------------

def test_export_removes_temporary_files_of_dead_backends(conn, tiny, workdir):
    target = workdir / "export" / "model.safetensors"
    target.parent.mkdir(exist_ok=True)
    target.parent.chmod(0o777)
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead, alive = finished.pid, os.getpid()
    leftovers = {f"model.safetensors.tmp{dead}": False,         # removed
                 f"model.safetensors.tmp{alive}": True,         # its writer may still be at work
                 "model.safetensors.tmpx1": True,               # not ours
                 f"other.safetensors.tmp{dead}": True}          # another target's
    for name in leftovers:
        write(target.parent, name, b"half a checkpoint")
    assert q(conn, "SELECT pg_llm_export_safetensors(%s, %s)", MODEL, str(target)) > 0
    for name, kept in leftovers.items():
        assert (target.parent / name).exists() == kept, name
    assert target.exists()


def test_export_does_not_write_through_a_planted_symlink(conn, tiny, workdir):
    """Whoever can write to the export folder may plant <target>.tmp<pid> as a
    link to another file: the export must replace the link, not write through it."""
    target = workdir / "planted" / "model.safetensors"
    target.parent.mkdir(exist_ok=True)
    target.parent.chmod(0o777)
    victim = workdir / "victim.txt"
    victim.write_bytes(b"precious")
    victim.chmod(0o666)
    backend = q(conn, "SELECT pg_backend_pid()")
    (target.parent / f"model.safetensors.tmp{backend}").symlink_to(victim)
    assert q(conn, "SELECT pg_llm_export_safetensors(%s, %s)", MODEL, str(target)) > 0
    assert victim.read_bytes() == b"precious"
    assert target.exists() and not target.is_symlink()
    assert not (target.parent / f"model.safetensors.tmp{backend}").exists()


# ---- clearer answers ------------------------------------------------------------------------

NULL_CALLS = [
    ("SELECT llm_init(%s, NULL)", [MODEL], "seed"),
    ("SELECT llm_init(NULL, 1)", [], "model"),
    ("SELECT llm_import_hf('/tmp', NULL)", [], "model"),
    ("SELECT llm_import_hf(NULL, %s)", [MODEL], "dir"),
    ("SELECT llm_register_hf_config(NULL, '{}')", [], "p_model"),
    ("SELECT llm_register_hf_config(%s, NULL)", [MODEL], "p_config"),
    ("SELECT pg_llm_import_safetensors(NULL, %s)", [MODEL], "path"),
    ("SELECT pg_llm_import_npz('/tmp/x.npz', NULL)", [], "model"),
    ("SELECT llm_import_tensors(%s, '/tmp/x', NULL)", [MODEL], "p_format"),
    ("SELECT pg_llm_export_safetensors(%s, NULL)", [MODEL], "path"),
    ("SELECT llm_export_hf(NULL, '/tmp/x')", [], "model"),
    ("SELECT llm_export_hf(%s, NULL)", [MODEL], "dir"),
    ("SELECT llm_check_complete(NULL)", [], "p_model"),
    ("SELECT llm_hf_config(NULL)", [], "p_model"),
    ("SELECT llm_import_require_model(NULL)", [], "p_model"),
]


@pytest.mark.parametrize("sql,params,argument", NULL_CALLS)
def test_null_arguments_are_named(conn, tiny, sql, params, argument):
    function = sql.split("(")[0].split()[-1]
    expect_error(conn, sql, params, "22004", function, f'"{argument}"')


def test_bad_config_json_names_the_file(conn, workdir):
    folder = workdir / "bad_json"
    folder.mkdir(exist_ok=True)
    make_readable(folder)
    write(folder, "config.json", b"{not json")
    expect_error(conn, "SELECT llm_import_hf(%s, 'h_x')", [str(folder)], "22P02", str(folder / "config.json"))
    write(folder, "config.json", b'{"n_layer": 1,\0 "n_head": 1}')
    expect_error(conn, "SELECT llm_import_hf(%s, 'h_x')", [str(folder)], "22021",
                 str(folder / "config.json"), "byte 14")


def test_text_files_are_read_to_the_end(conn):
    """/proc files say they are empty (st_size 0) but have content."""
    assert os.stat("/proc/version").st_size == 0
    assert q(conn, "SELECT llm_read_text_file('/proc/version')") == Path("/proc/version").read_text()


@pytest.mark.parametrize("factor", [3.5e38, -1e39, 1e-50])
def test_scale_factor_out_of_real_range(conn, factor):
    expect_error(conn, "SELECT llm_scale('[1]', %s)", [factor], "22003", "out of range")


def test_tensor_input_follows_real(conn):
    expect_error(conn, "SELECT '[1, 1e-50]'::tensor", [], "22003", "1e-50", "out of range for type real")
    expect_error(conn, "SELECT '1e-50'::real", [], "22003")  # what real does
    denormal = q(conn, "SELECT real_array('[1e-45]'::tensor)")[0]
    assert denormal == q(conn, "SELECT '1e-45'::real") > 0
    canonical_nan = struct.pack("<f", float("nan"))
    for spelling in ["NaN", "nan(0x123)", "-nan"]:
        assert q(conn, f"SELECT llm_bytea('[{spelling}]'::tensor)") == canonical_nan, spelling


@pytest.mark.parametrize("sql", ["SELECT llm_fill('{{2},{2}}', 0)", "SELECT llm_randn('{{2,2}}', 1, 1)",
                                 "SELECT llm_tensor('{1,2,3,4}'::real[], '{{2},{2}}')",
                                 "SELECT llm_reshape('[1,2,3,4]', '{{2},{2}}')",
                                 "SELECT llm_embedding('[[1],[2]]', '{{0},{1}}')"])
def test_int_arrays_must_be_one_dimensional(conn, sql):
    expect_error(conn, sql, [], "22023", "one-dimensional", "2 dimensions")


# ---- safe by default: search_path ----------------------------------------------------------------

def test_every_sql_function_pins_its_search_path(conn):
    schema = q(conn, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_llm'")
    functions = conn.execute("""
        SELECT p.oid::regprocedure::text, p.proconfig
        FROM pg_proc p
        JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_llm'
        JOIN pg_language l ON l.oid = p.prolang
        WHERE l.lanname IN ('sql', 'plpgsql')""").fetchall()
    assert len(functions) >= 20
    pinned = f"search_path=pg_catalog, {schema}, pg_temp"
    assert [f for f, config in functions if pinned not in (config or [])] == []


def test_a_temporary_llm_param_does_not_shadow_the_real_one(conn, tiny, workdir):
    want = q(conn, "SELECT llm_logits(%s, %s)", MODEL, TOKENS)
    conn.execute("SELECT llm_model_cache_clear()")
    conn.execute("CREATE TEMP TABLE llm_param (model text, name text, shape int[], data tensor)")
    conn.execute("CREATE TEMP TABLE llm_model_config (model text, version bigint)")
    try:
        np.testing.assert_array_equal(q(conn, "SELECT llm_logits(%s, %s)", MODEL, TOKENS), want)
        conn.execute("SELECT llm_check_complete(%s)", [MODEL])
        conn.execute("SELECT llm_init(%s, 5)", [MODEL])
        out = workdir / "shadow.safetensors"
        assert q(conn, "SELECT pg_llm_export_safetensors(%s, %s)", MODEL, str(out)) > 0
        assert q(conn, "SELECT count(*) FROM pg_temp.llm_param") == 0
        assert q(conn, "SELECT count(*) FROM public.llm_param WHERE model = %s", MODEL) == 16
    finally:
        conn.execute("DROP TABLE pg_temp.llm_param, pg_temp.llm_model_config")


@pytest.fixture
def schema_db(conn, db_url):
    """A database with pg_llm in its own schema `llm`; yields a superuser connection."""
    conn.execute("DROP DATABASE IF EXISTS llm_hardening_db WITH (FORCE)")
    conn.execute("CREATE DATABASE llm_hardening_db")
    url = psycopg.conninfo.make_conninfo(db_url, dbname="llm_hardening_db")
    try:
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("CREATE SCHEMA llm")
            other.execute("CREATE EXTENSION pg_llm SCHEMA llm")
            yield other
    finally:
        conn.execute("DROP DATABASE IF EXISTS llm_hardening_db WITH (FORCE)")


def test_extension_in_its_own_schema_resists_planted_objects(role, schema_db):
    """CVE-2018-1058: a user who may create objects in public plants functions
    and tables there; a superuser whose search_path is public, llm must still
    run pg_llm's own."""
    db = schema_db
    db.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")
    db.execute(f"GRANT USAGE ON SCHEMA llm TO {role}")
    db.execute(f"SET ROLE {role}")
    db.execute("CREATE TABLE public.hijacked (who text)")
    db.execute("GRANT INSERT ON public.hijacked TO PUBLIC")
    db.execute("""CREATE FUNCTION public.llm_add(a llm.tensor, b llm.tensor) RETURNS llm.tensor
                  LANGUAGE sql AS $$ INSERT INTO public.hijacked VALUES ('llm_add')
                                     RETURNING llm.llm_scale(a, 1000) $$""")
    db.execute("""CREATE FUNCTION public.llm_fill(shape int[], value int) RETURNS llm.tensor
                  LANGUAGE sql AS $$ INSERT INTO public.hijacked VALUES ('llm_fill')
                                     RETURNING llm.llm_fill(shape, 7.0::double precision) $$""")
    db.execute("""CREATE TABLE public.llm_model_config AS
                  SELECT 'm'::text AS model, 1 AS n_layer, 1 AS n_head, 4 AS n_embd, 16 AS n_positions,
                         11 AS vocab_size, 1e-5::real AS layer_norm_eps, NULL::int AS n_inner,
                         1::bigint AS version""")
    db.execute("CREATE TABLE public.llm_param (model text, name text, shape int[], data llm.tensor)")
    db.execute("RESET ROLE")

    db.execute("SET search_path = public, llm")
    got = db.execute(r"SELECT pg_llm_add('\x0000803f'::bytea, '\x0000803f'::bytea)").fetchone()[0]
    assert got == struct.pack("<f", 2.0)
    db.execute("INSERT INTO llm.llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
               " VALUES ('m', 1, 1, 8, 16, 11)")
    db.execute("SELECT llm_init('m', 1)")
    assert db.execute("SELECT count(*) FROM llm.llm_param WHERE model = 'm'").fetchone()[0] == 16
    assert db.execute("SELECT llm_shape(llm_logits('m', '{1,2}'))").fetchone()[0] == [2, 11]
    db.execute("SET search_path = public")  # the C code finds its tables without it
    assert db.execute("SELECT llm.llm_shape(llm.llm_logits('m', '{1,2}'))").fetchone()[0] == [2, 11]
    assert db.execute("SELECT * FROM public.hijacked").fetchall() == []
    assert db.execute("SELECT count(*) FROM public.llm_param").fetchone()[0] == 0


# ---- safe by default: threads ---------------------------------------------------------------------

def test_threads_beyond_the_cores_need_a_superuser(conn, role):
    cores = q(conn, "SELECT (llm_info() ->> 'cores')::int")
    conn.execute(f"SET ROLE {role}")
    conn.execute(f"SET pg_llm.threads = {cores}")
    expect_error(conn, f"SET pg_llm.threads = {cores + 1}", [], "42501", "pg_llm.threads", f"{cores} cores")
    conn.execute("RESET ROLE")
    conn.execute(f"SET pg_llm.threads = {cores + 1}")               # a superuser may
    assert q(conn, "SELECT (llm_info() ->> 'threads')::int") == cores + 1
    conn.execute("RESET pg_llm.threads")
