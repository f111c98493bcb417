"""Upgrades that lose nothing: a database made with the previous release of
pg_llm (extension/releases/), filled with a tokenizer, a model, a dataset,
training logs and a checkpoint, is moved to this release by
ALTER EXTENSION pg_llm UPDATE -- directly, and by pg_llm_lab.connect() -- and
then has the catalog of a fresh install and all its data, bit for bit.

When this fails after a change of sql/*.sql, its message names each object
that differs: add the change to extension/releases/pg_llm--<previous>--<this>.sql
(extension/releases/README.md); a new function's CREATE and COMMENT ON are
written there by python3 tools/gen_upgrade_functions.py."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import pg_llm_lab
from catalog_snapshot import diff, snapshot, suggested_upgrade_sql
from pg_llm_lab.adapters import register_tensor

PREVIOUS = "0.2.0"
EXTENSION = Path(__file__).resolve().parent.parent / "extension"
MODEL = "upgrade-tiny"
TOKENS = [3, 1, 4, 1, 5, 9, 2, 6]


def database_url(server_url: str, name: str) -> str:
    """A fresh, empty database `name` on the session's server; its connection string."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_previous_release(url: str) -> None:
    """CREATE EXTENSION pg_llm VERSION PREVIOUS, and what a learner of that release made with it."""
    with psycopg.connect(url, autocommit=True) as conn:
        # A C symbol that the previous release named may be gone from this .so.
        conn.execute("SET check_function_bodies = off")
        conn.execute(f"CREATE EXTENSION pg_llm VERSION '{PREVIOUS}'")
        register_tensor(conn)
        conn.execute("SELECT llm_bpe_train('upgrade-bpe', ARRAY['the cat sat on the mat', "
                     "'the dog sat on the log'], 270)")
        conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                     "VALUES (%s, 2, 2, 16, 16, 32)", [MODEL])
        conn.execute("SELECT llm_init(%s, 11)", [MODEL])
        tokens = (np.arange(200) * 7 % 31).tolist()
        conn.execute("SELECT llm_dataset_from_tokens(%s, 8, val_fraction => 0.2)", [tokens])
        batch = [TOKENS, TOKENS[::-1]]
        targets = [row[1:] + [0] for row in batch]
        conn.execute("SELECT llm_train_step(%s, %s, %s, lr => 1e-3, clip => 1.0)", [MODEL, batch, targets])
        conn.execute("SELECT llm_checkpoint_save(%s, 'before the upgrade')", [MODEL])
        conn.execute("CALL llm_train(%s, steps => 2, batch_size => 2, notice_every => 0, save_every => 1)",
                     [MODEL])


def extension_tables(conn) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
        "JOIN pg_extension e ON e.oid = d.refobjid "
        "WHERE d.refclassid = 'pg_extension'::regclass AND d.classid = 'pg_class'::regclass "
        "AND e.extname = 'pg_llm' AND c.relkind = 'r' ORDER BY 1")]


def table_contents(url: str, columns: dict[str, list[str]] | None = None) -> dict[str, list]:
    """{table: its rows, sorted} of every pg_llm table, in binary (a tensor as its exact bytes).

    columns: {table: column names} to read (an upgrade may add columns); default all.
    """
    with psycopg.connect(url) as conn:
        out = {}
        for table in (columns or extension_tables(conn)):
            names = (columns or {}).get(table) or [r[0] for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum", [table])]
            select = ", ".join(f'"{n}"' for n in names)
            rows = conn.cursor(binary=True).execute(f"SELECT {select} FROM {table}").fetchall()
            out[table] = (names, sorted(rows, key=repr))
        return out


def sequence_values(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT sequencename::text, last_value FROM pg_sequences").fetchall())


def logits(url: str) -> bytes:
    with psycopg.connect(url) as conn:
        return conn.cursor(binary=True).execute("SELECT llm_logits(%s, %s)", [MODEL, TOKENS]).fetchone()[0]


@pytest.fixture(scope="module")
def server_url(db_url):
    return db_url


@pytest.fixture(scope="module")
def fresh(server_url):
    """A database with this release of pg_llm, freshly created; its catalog snapshot."""
    url = database_url(server_url, "pg_llm_upgrade_fresh")
    with pg_llm_lab.connect(url) as conn:
        yield snapshot(conn), table_contents(url), url
    drop_database(server_url, "pg_llm_upgrade_fresh")


@pytest.fixture(scope="module")
def before(server_url):
    """A database of the previous release, filled; its contents before the update."""
    url = database_url(server_url, "pg_llm_upgrade_before")
    create_previous_release(url)
    yield url, table_contents(url), sequence_values(url), logits(url)
    drop_database(server_url, "pg_llm_upgrade_before")


@pytest.fixture(scope="module")
def updated(before):
    """The previous release's database after ALTER EXTENSION pg_llm UPDATE."""
    url = before[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER EXTENSION pg_llm UPDATE")
    return url


def test_the_version_is_one_for_the_package_and_the_extension(conn):
    control = (EXTENSION / "pg_llm.control").read_text()
    assert re.search(r"^default_version = '(.*)'$", control, re.M)[1] == pg_llm_lab.__version__
    assert conn.execute("SELECT llm_info()->>'version'").fetchone()[0] == pg_llm_lab.__version__
    assert (EXTENSION / "releases" / f"pg_llm--{PREVIOUS}.sql").exists()
    assert (EXTENSION / "releases" / f"pg_llm--{PREVIOUS}--{pg_llm_lab.__version__}.sql").exists()


def test_the_new_functions_block_is_current():
    """The upgrade script creates every function new since the previous release:
    tools/gen_upgrade_functions.py wrote them (a new function's CREATE is never copied by hand)."""
    result = subprocess.run([sys.executable, str(EXTENSION.parent / "tools" / "gen_upgrade_functions.py"),
                             "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_update_reaches_this_release(updated):
    with psycopg.connect(updated) as conn:
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_llm'"
                            ).fetchone()[0] == pg_llm_lab.__version__


def test_updated_catalog_equals_a_fresh_install(fresh, updated):
    with psycopg.connect(updated) as conn:
        upgraded = snapshot(conn)
    differences = diff(fresh[0], upgraded)
    assert not differences, (
        f"{len(differences)} objects differ between a fresh install and {PREVIOUS} updated:\n"
        + "\n".join(differences)
        + f"\n\nSQL for extension/releases/pg_llm--{PREVIOUS}--{pg_llm_lab.__version__}.sql that would "
        "fix it, where it can be derived (read it first):\n" + suggested_upgrade_sql(fresh[0], upgraded))


def test_update_keeps_every_row_bit_for_bit(before, updated):
    _, rows_before, _, _ = before
    columns = {table: names for table, (names, _) in rows_before.items()}
    assert table_contents(updated, columns) == rows_before
    # The data the test made is there (not an empty database compared with itself).
    for table in ("llm_param", "llm_dataset", "llm_train_log", "llm_checkpoint", "llm_checkpoint_param",
                  "llm_tokenizer", "llm_bpe_merges"):
        assert rows_before[table][1], f"{table} was not filled"
    assert len(rows_before["llm_train_log"][1]) == 3


def test_update_keeps_sequences_and_logits(before, updated):
    _, _, sequences, logits_before = before
    after = sequence_values(updated)    # (with the sequences of the tables the update adds)
    assert {name: after.get(name) for name in sequences} == sequences
    assert logits(updated) == logits_before
    with pg_llm_lab.connect(updated) as conn:  # and the model goes on training from where it was
        step = conn.execute("SELECT max(step) FROM llm_param WHERE model = %s", [MODEL]).fetchone()[0]
        conn.execute("CALL llm_train(%s, steps => 1, batch_size => 2, notice_every => 0)", [MODEL])
        assert conn.execute("SELECT max(step) FROM llm_param WHERE model = %s",
                            [MODEL]).fetchone()[0] == step + 1
        assert conn.execute("SELECT llm_checkpoint_load(%s, min(id)) IS NOT NULL FROM llm_checkpoint",
                            [MODEL]).fetchone()[0]


def test_update_gives_every_row_to_the_superuser(updated):
    """The rows of 0.2.0 had no owner: after the update, the superuser who ran it owns them,
    and the datasets carry that role's name, which llm_train and llm_eval read by default
    (test_update_keeps_sequences_and_logits trains on them)."""
    with psycopg.connect(updated) as conn:
        me = conn.execute("SELECT current_user").fetchone()[0]
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        for table in ("llm_model_config", "llm_tokenizer", "llm_dataset", "llm_checkpoint"):
            owners = conn.execute(f"SELECT DISTINCT owner FROM {table}").fetchall()
            assert owners == [(me,)], f"{table}: {owners}"
        assert conn.execute("SELECT DISTINCT dataset FROM llm_dataset").fetchall() == [(me,)]
        assert conn.execute("SELECT bool_or(shared) FROM llm_model_config").fetchone()[0] is False


def test_update_keeps_the_rows_a_fresh_install_inserts(fresh, updated):
    """What the install script itself puts in tables (gpt2-small's config, ...) is there too,
    but for when it was inserted (timestamp columns)."""
    with psycopg.connect(updated) as conn:
        stamps = set(conn.execute(
            "SELECT attrelid::regclass::text, attname FROM pg_attribute "
            "WHERE atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype) AND attnum > 0").fetchall())
    upgraded_columns = {table: set(names) for table, (names, _) in table_contents(updated).items()}
    # (a column or table missing after the update is test_updated_catalog_equals_a_fresh_install's to report)
    columns = {table: [n for n in names if (table, n) not in stamps and n in upgraded_columns[table]]
               for table, (names, _) in fresh[1].items() if table in upgraded_columns}
    seeded = table_contents(fresh[2], columns)
    after = table_contents(updated, columns)
    assert seeded["llm_model_config"][1], "a fresh install inserts gpt2-small's config"
    for table, (names, rows) in seeded.items():
        missing = [row for row in rows if row not in after[table][1]]
        assert not missing, f"{table}: rows of a fresh install missing after the update: {missing}"


def test_connect_updates_an_older_database_and_says_so(server_url, capsys):
    url = database_url(server_url, "pg_llm_upgrade_connect")
    try:
        create_previous_release(url)
        rows_before = table_contents(url)
        capsys.readouterr()
        with pg_llm_lab.connect(url) as conn:
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_llm'"
                                ).fetchone()[0] == pg_llm_lab.__version__
        said = capsys.readouterr().err
        assert (f"pg_llm {PREVIOUS} -> {pg_llm_lab.__version__}: updated, your models, datasets, "
                "logs and checkpoints are kept") in said
        columns = {table: names for table, (names, _) in rows_before.items()}
        assert table_contents(url, columns) == rows_before
        with pg_llm_lab.connect(url):  # up to date: nothing more is said
            pass
        assert "updated" not in capsys.readouterr().err
    finally:
        drop_database(server_url, "pg_llm_upgrade_connect")


def test_connect_warns_when_the_server_has_no_newer_pg_llm(db_url, monkeypatch):
    """A server whose installed pg_llm is older than the package (a Docker image of last
    release, say) cannot be updated by connect(): it says what to do instead."""
    monkeypatch.setattr(pg_llm_lab.db, "__version__", "99.0.0")
    with pytest.warns(UserWarning, match=r"the server has no newer one; pg_llm_lab is 99\.0\.0"):
        pg_llm_lab.connect(db_url).close()


def test_connect_warns_when_the_user_may_not_update(server_url):
    """Only the extension's owner may update it: another user is told whom to ask."""
    url = database_url(server_url, "pg_llm_upgrade_role")
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS llm_upgrade_learner")
        admin.execute("CREATE ROLE llm_upgrade_learner LOGIN")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE EXTENSION pg_llm VERSION '{PREVIOUS}'")
        with pytest.warns(UserWarning, match=r"may not update it .*ask the database owner"):
            pg_llm_lab.connect(make_conninfo(url, user="llm_upgrade_learner")).close()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_llm'"
                                ).fetchone()[0] == PREVIOUS
    finally:
        drop_database(server_url, "pg_llm_upgrade_role")
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute("DROP ROLE IF EXISTS llm_upgrade_learner")


def test_the_suggested_upgrade_sql_is_what_sql_would_write():
    """The failure message's SQL: schema-free, @extschema@ in search_path, comments, columns, drops."""
    fresh = {
        "function llm_f(integer)": ("CREATE OR REPLACE FUNCTION public.llm_f(a integer)\n RETURNS integer\n"
                                    " LANGUAGE sql\n SET search_path TO 'pg_catalog', 'public', 'pg_temp'\n"
                                    "AS $function$SELECT 'public.' || a$function$\n", "it's f", None),
        "table llm_t column c": ("text", True, "'x'::text", "", "", "the c", "x", "", "default", None),
        "table llm_t constraint llm_t_c_not_null": ("NOT NULL c", None),
    }
    upgraded = {"function llm_old(text)": ("CREATE OR REPLACE PROCEDURE public.llm_old(t text)\n...", None, None)}
    assert suggested_upgrade_sql(fresh, upgraded).splitlines() == [
        "DROP PROCEDURE llm_old(text);",
        "-- (if its result type changed: DROP FUNCTION llm_f(integer); first)",
        "CREATE OR REPLACE FUNCTION llm_f(a integer)",
        " RETURNS integer",
        " LANGUAGE sql",
        " SET search_path TO 'pg_catalog', @extschema@, 'pg_temp'",
        "AS $function$SELECT 'public.' || a$function$;",
        "COMMENT ON FUNCTION llm_f(integer) IS 'it''s f';",
        "ALTER TABLE llm_t ADD COLUMN c text DEFAULT 'x'::text NOT NULL;",
        "COMMENT ON COLUMN llm_t.c IS 'the c';",
    ]
