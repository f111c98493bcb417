"""pg_dump and pg_restore keep everything a learner made.

A database with every kind of user data -- a tokenizer trained with
llm_bpe_train, a model trained with AdamW (llm_train_step and CALL llm_train),
a dataset, logged steps, gradient statistics and a checkpoint -- is dumped
(pg_dump -Fc) and restored (pg_restore) into a fresh database.  Every table
of pg_llm, read from the catalog (a table added later is covered too), is
either marked as user data (pg_extension_config_dump, sql/90_backup.sql) and
then restored bit for bit, or named in SCRATCH with the reason it is not.
Then training, generation and checkpoints in the restored copy give exactly
what they give in the original.  Across versions too, between PostgreSQL 15
and 18, both ways, where $PG_LLM_PG15_URL names a PostgreSQL 15 server with
pg_llm installed (.ci/pg15 sets it; the dumps are made by the embedded 18's
pg_dump, which reads older servers).
"""
import os
import subprocess

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import pg_llm_lab
from pg_llm_lab import server
from test_upgrade import create_previous_release, logits

MODEL = "backup-tiny"
TEXT = "the cat sat on the mat. the dog sat on the log. " * 20
PROMPT = [5, 9, 2]
PG15 = os.environ.get("PG_LLM_PG15_URL")

# Tables pg_dump leaves out, and why.
SCRATCH = {
    "llm_tape_all": "the autograd tape of running sessions, keyed by their process ids",
    "llm_tensor_rt_all": "the tensors of that tape",
}
# Columns the restore gives new values, and why.
RENEWED = {
    ("llm_model_config", "version"): "a cache key: restoring a model's rows gives it a fresh version "
                                     "(llm_model_config_new_version), so no backend serves old weights",
    ("llm_tokenizer", "version"): "a cache key, renewed likewise by the restored vocab and merges",
}


def fresh_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return make_conninfo(admin_url, dbname=name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(url: str) -> None:
    """What a learner makes: a tokenizer, a model trained with AdamW, a dataset, logs, a checkpoint."""
    with pg_llm_lab.connect(url) as conn:
        vocab = conn.execute("SELECT llm_bpe_train(%s, %s::text[], 280)", [MODEL, TEXT.split(". ")]).fetchone()[0]
        conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                     "VALUES (%s, 2, 2, 16, 16, %s)", [MODEL, vocab])
        conn.execute("SELECT llm_init(%s, 3)", [MODEL])
        conn.execute("SELECT llm_dataset_from_text(%s, %s, 8, val_fraction => 0.2)", [MODEL, TEXT])
        conn.execute("SELECT llm_train_step(%s, %s, %s, lr => 1e-3, clip => 1.0)",
                     [MODEL, [PROMPT * 2], [(PROMPT * 2)[1:] + [0]]])
        conn.execute("CALL llm_train(%s, steps => 3, batch_size => 2, save_every => 2, notice_every => 0,"
                     " run => 'first')", [MODEL])
        conn.execute("SELECT llm_checkpoint_save(%s, 'before the backup')", [MODEL])


def user_tables(conn) -> dict[str, str]:
    """{table: its pg_extension_config_dump condition, or None if unmarked} of every table of pg_llm."""
    return dict(conn.execute("""
        SELECT c.relname::text, x.cond
        FROM pg_depend d
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_llm'
        JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'r'
        LEFT JOIN unnest(e.extconfig, e.extcondition) AS x(rel, cond) ON x.rel = c.oid
        WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'""").fetchall())


def contents(url: str, tables: dict[str, str]) -> dict[str, list]:
    """{table: the rows its condition selects (what pg_dump keeps), sorted, every column but RENEWED
    ones} in binary: a tensor is its exact bytes."""
    with psycopg.connect(url) as conn:
        out = {}
        for table, condition in tables.items():
            names = [n for (n,) in conn.execute(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum", [table]) if (table, n) not in RENEWED]
            select = ", ".join(f'"{n}"' for n in names)
            rows = conn.cursor(binary=True).execute(f"SELECT {select} FROM {table} {condition}")
            out[table] = (names, sorted(rows, key=repr))
        return out


def sequences(url: str) -> dict[str, int]:
    """{sequence: last_value} of pg_llm's sequences."""
    with psycopg.connect(url) as conn:
        return dict(conn.execute("""
            SELECT c.relname::text, s.last_value FROM pg_depend d
            JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_llm'
            JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
            JOIN pg_sequences s ON s.sequencename = c.relname
            WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'""").fetchall())


def dump_and_restore(original: str, restored: str, dump) -> None:
    """pg_dump -Fc and pg_restore, the embedded PostgreSQL 18's (they read and write older servers)."""
    subprocess.run([server.embedded_bin("pg_dump"), "-Fc", "-f", dump, "-d", original], check=True)
    with psycopg.connect(restored) as conn:
        target_version = conn.info.server_version
    if target_version >= 170000:
        subprocess.run([server.embedded_bin("pg_restore"), "--exit-on-error", "-d", restored, dump], check=True)
        return
    # Into PostgreSQL 15 or 16: as the SQL script pg_restore writes, without the setting
    # only 17+ knows (PostgreSQL does not promise that a dump restores into an older release).
    script = subprocess.run([server.embedded_bin("pg_restore"), "-f", "-", dump],
                            check=True, capture_output=True, text=True).stdout
    subprocess.run([server.embedded_bin("psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", restored],
                   input=script.replace("SET transaction_timeout = 0;\n", ""), check=True, text=True,
                   stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def copies(db_url, tmp_path_factory):
    """(original, restored): a filled database, and what pg_dump -Fc + pg_restore made of it."""
    original = fresh_database(db_url, "pg_llm_backup_original")
    fill(original)
    restored = fresh_database(db_url, "pg_llm_backup_restored")
    dump_and_restore(original, restored, tmp_path_factory.mktemp("backup") / "lab.dump")
    yield original, restored
    drop_database(db_url, "pg_llm_backup_original")
    drop_database(db_url, "pg_llm_backup_restored")


def test_every_table_is_user_data_or_scratch(conn):
    tables = user_tables(conn)
    unmarked = {t for t, cond in tables.items() if cond is None}
    assert unmarked == set(SCRATCH), (
        f"tables pg_dump would leave out: {sorted(unmarked - set(SCRATCH))} -- mark them with "
        f"pg_extension_config_dump in sql/90_backup.sql (and the upgrade script), or name them in SCRATCH; "
        f"marked but named in SCRATCH: {sorted(set(SCRATCH) - unmarked)}")
    assert tables["llm_model_config"] == "WHERE model <> 'gpt2-small'", "the seed row would be restored twice"


def test_restore_keeps_every_row_bit_for_bit(copies):
    rows = assert_same_rows(*copies)
    assert all(rows.values()), \
        f"fill() made no rows in {[t for t, n in rows.items() if not n]}: the test would prove nothing"


def assert_same_rows(original: str, restored: str) -> dict[str, int]:
    """Every row of every user-data table is in both, bit for bit; {table: its rows}."""
    with psycopg.connect(original) as conn:
        tables = {t: cond for t, cond in user_tables(conn).items() if t not in SCRATCH}
    before, after = contents(original, tables), contents(restored, tables)
    for table in tables:
        assert after[table] == before[table], f"{table} differs after pg_dump + pg_restore"
    return {table: len(before[table][1]) for table in tables}


def test_restore_keeps_the_sequences(copies):
    """The numbers of rows and versions go on from where they were: none is handed out twice."""
    original, restored = copies
    assert sequences(restored) == sequences(original)
    with psycopg.connect(restored) as conn:
        assert conn.execute("SELECT max(version) FROM llm_model_config").fetchone()[0] \
            <= sequences(restored)["llm_param_version_seq"]


def train_generate_and_load(url: str) -> tuple:
    """Train on, generate, and load the checkpoint back: every result, in binary (tensors as bytes)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CALL llm_train(%s, steps => 2, batch_size => 2, seed => 5, notice_every => 0)", [MODEL])
        cur = conn.cursor(binary=True)
        trained = cur.execute("SELECT name, data, m, v, step FROM llm_param WHERE model = %s ORDER BY name",
                              [MODEL]).fetchall()
        log = cur.execute("SELECT step, loss, lr, grad_norm, batch FROM llm_train_log WHERE model = %s "
                          "ORDER BY id", [MODEL]).fetchall()
        tokens = conn.execute("SELECT llm_generate_tokens(%s, %s, 8, temperature => 0.8, seed => 3)",
                              [MODEL, PROMPT]).fetchone()[0]
        text = conn.execute("SELECT llm_generate('the cat', 8, model => %s, seed => 4)", [MODEL]).fetchone()[0]
        checkpoint = conn.execute("SELECT max(id) FROM llm_checkpoint").fetchone()[0]
        conn.execute("SELECT llm_checkpoint_load(%s, %s)", [MODEL, checkpoint])
        loaded = cur.execute("SELECT name, data, m, v, step FROM llm_param WHERE model = %s ORDER BY name",
                             [MODEL]).fetchall()
        loss = conn.execute("SELECT loss FROM llm_eval(%s)", [MODEL]).fetchone()[0]
    return trained, log, tokens, text, loaded, loss


def test_the_restored_copy_trains_and_generates_as_the_original(copies):
    original, restored = copies
    want, got = train_generate_and_load(original), train_generate_and_load(restored)
    for what, a, b in zip(["weights after training", "the log", "generated tokens", "generated text",
                           "the checkpoint loaded", "the eval loss"], want, got):
        assert b == a, f"{what} differ between the original and the restored copy"
    assert want[-1] > 0


@pytest.mark.skipif(not PG15, reason="needs a PostgreSQL 15 server with pg_llm in $PG_LLM_PG15_URL: .ci/pg15 runs it")
@pytest.mark.parametrize("source, target", [("15", "18"), ("18", "15")])
def test_dump_and_restore_between_postgresql_15_and_18(db_url, tmp_path, source, target):
    servers = {"15": PG15, "18": db_url}
    original = fresh_database(servers[source], "pg_llm_backup_from")
    restored = fresh_database(servers[target], "pg_llm_backup_to")
    try:
        fill(original)
        dump_and_restore(original, restored, tmp_path / "lab.dump")
        assert_same_rows(original, restored)
        assert train_generate_and_load(restored) == train_generate_and_load(original)
    finally:
        drop_database(servers[source], "pg_llm_backup_from")
        drop_database(servers[target], "pg_llm_backup_to")


def test_a_database_updated_from_0_2_0_dumps_and_restores(db_url, tmp_path):
    """A 0.2.0 database (which marked nothing) keeps everything once ALTER EXTENSION UPDATE has run."""
    original = fresh_database(db_url, "pg_llm_backup_updated")
    restored = fresh_database(db_url, "pg_llm_backup_updated_restored")
    try:
        create_previous_release(original)
        with psycopg.connect(original, autocommit=True) as conn:
            conn.execute("ALTER EXTENSION pg_llm UPDATE")
        dump_and_restore(original, restored, tmp_path / "lab.dump")
        assert_same_rows(original, restored)
        assert logits(restored) == logits(original)
    finally:
        drop_database(db_url, "pg_llm_backup_updated")
        drop_database(db_url, "pg_llm_backup_updated_restored")


def test_a_tensor_written_as_base64_dumps_and_restores(db_url, tmp_path):
    """A tensor of more than 8,388,608 values is base64 text: pg_dump's line of its row stays short enough."""
    original = fresh_database(db_url, "pg_llm_backup_wide")
    restored = fresh_database(db_url, "pg_llm_backup_wide_restored")
    try:
        with pg_llm_lab.connect(original) as conn:
            conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                         "VALUES ('wide', 1, 1, 8, 8, 1048577)")             # wte: 8,388,616 values
            conn.execute("SELECT llm_init('wide', 1)")
            conn.execute("SELECT llm_train_step('wide', '{1,2,3}', '{2,3,4}', 1e-3)")   # grad, m and v too
            conn.execute("SELECT llm_checkpoint_save('wide')")
            assert conn.execute("SELECT left(data::text, 7) FROM llm_param "
                                "WHERE model = 'wide' AND name = 'wte.weight'").fetchone()[0] == "base64:"
        dump_and_restore(original, restored, tmp_path / "wide.dump")
        assert_same_rows(original, restored)
    finally:
        drop_database(db_url, "pg_llm_backup_wide")
        drop_database(db_url, "pg_llm_backup_wide_restored")
