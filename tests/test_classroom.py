"""A class on one server (issue 16): learners kept apart by row-level security.

After llm_classroom_init, two learners (cls_alice, cls_bob) and an instructor
(cls_teacher) log in as themselves.  alice trains a tiny model, makes its
tokenizer and dataset, saves a checkpoint and records a tape; bob can read,
change or delete none of it -- in any table of the extension, enumerated from
the catalog -- and every function he points at it fails clearly; once alice
shares the model bob generates from it and reads it, and still cannot change
it; the instructor reads everything.
"""
import json
import os
import re
import subprocess
import sys

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from safetensors.numpy import save_file

import pg_llm_lab

ALICE, BOB, TEACHER = "cls_alice", "cls_bob", "cls_teacher"
MODEL = "cls_alice_gpt"
TEXT = ["the cat sat on the mat", "the dog sat on the log", "a class of learners on one server"] * 4
TOKENS = [5, 6, 7, 8, 9, 10, 11, 12]


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def expect_error(conn, sql, params, sqlstate, *words):
    """sql fails with sqlstate and every word in the message; the session goes on."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.sqlstate == sqlstate, str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert q(conn, "SELECT 1") == 1
    return info.value


def extension_tables(conn) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
        "JOIN pg_extension e ON e.oid = d.refobjid WHERE d.refclassid = 'pg_extension'::regclass "
        "AND d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND e.extname = 'pg_llm' "
        "AND c.relkind = 'r' ORDER BY 1")]


def plain_column(conn, table: str) -> str:
    """A column of table that an UPDATE may set to itself (not an identity or generated one)."""
    return q(conn, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                   "AND attidentity = '' AND attgenerated = '' AND NOT attisdropped ORDER BY attnum LIMIT 1", table)


def alice_rows(conn) -> dict[str, int]:
    """How many rows of each table are alice's (seen by whoever asks)."""
    return {table: q(conn, f"SELECT count(*) FROM {table} WHERE {ROW_OWNER[table]} = %s", ALICE)
            for table in ROW_OWNER}


# Who owns a row of each table, as SQL over its columns.
ROW_OWNER = {
    "llm_model_config": "owner",
    "llm_param": "(SELECT c.owner FROM llm_model_config c WHERE c.model = llm_param.model)",
    "llm_train_log": "(SELECT c.owner FROM llm_model_config c WHERE c.model = llm_train_log.model)",
    "llm_grad_stats": "(SELECT c.owner FROM llm_model_config c WHERE c.model = llm_grad_stats.model)",
    "llm_train_lineage": "(SELECT c.owner FROM llm_model_config c WHERE c.model = llm_train_lineage.model)",
    "llm_train_run": "(SELECT c.owner FROM llm_model_config c WHERE c.model = llm_train_run.model)",
    "llm_tokenizer": "owner",
    "llm_bpe_vocab": "(SELECT t.owner FROM llm_tokenizer t WHERE t.model = llm_bpe_vocab.model)",
    "llm_bpe_merges": "(SELECT t.owner FROM llm_tokenizer t WHERE t.model = llm_bpe_merges.model)",
    "llm_dataset": "owner",
    "llm_checkpoint": "owner",
    "llm_checkpoint_param": "(SELECT k.owner FROM llm_checkpoint k WHERE k.id = llm_checkpoint_param.checkpoint)",
    "llm_tape_all": "owner",
    "llm_tensor_rt_all": "owner",
}


def drop_role(admin, role):
    if q(admin, "SELECT count(*) FROM pg_roles WHERE rolname = %s", role):
        admin.execute(f"DROP SCHEMA IF EXISTS {role} CASCADE")
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE {role}")


def forget_alice(admin):
    admin.execute("DELETE FROM llm_model_config WHERE owner = ANY(%s)", [[ALICE, BOB, TEACHER]])
    admin.execute("DELETE FROM llm_tokenizer WHERE owner = ANY(%s)", [[ALICE, BOB, TEACHER]])
    admin.execute("DELETE FROM llm_dataset WHERE owner = ANY(%s)", [[ALICE, BOB, TEACHER]])
    admin.execute("DELETE FROM llm_checkpoint WHERE owner = ANY(%s)", [[ALICE, BOB, TEACHER]])


@pytest.fixture(scope="module")
def admin(db_url):
    with pg_llm_lab.connect(db_url) as conn:
        yield conn


@pytest.fixture(scope="module")
def classroom(db_url, admin):
    """The class: llm_classroom_init, alice and bob learners, the teacher an instructor;
    a connection of each ({role: conn})."""
    admin.execute("SELECT llm_classroom_init()")
    for role in (ALICE, BOB, TEACHER):
        drop_role(admin, role)
    forget_alice(admin)
    admin.execute("SELECT llm_classroom_add_learner(%s)", [ALICE])
    admin.execute("SELECT llm_classroom_add_learner(%s)", [BOB])
    admin.execute("SELECT llm_classroom_add_learner(%s, instructor => true)", [TEACHER])
    conns = {role: pg_llm_lab.connect(make_conninfo(db_url, user=role)) for role in (ALICE, BOB, TEACHER)}
    try:
        yield conns
    finally:
        for c in conns.values():
            c.close()
        forget_alice(admin)
        for role in (ALICE, BOB, TEACHER):
            drop_role(admin, role)


@pytest.fixture(scope="module")
def alice(classroom):
    """alice's things: a tiny trained model with its tokenizer, dataset, checkpoint and tape;
    her checkpoint's id.  (Her session stays open: the tape is her live session's.)"""
    a = classroom[ALICE]
    a.execute("SELECT llm_bpe_train(%s, %s::text[], 300)", [MODEL, TEXT])
    a.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
              "VALUES (%s, 1, 2, 16, 16, 300)", [MODEL])
    a.execute("SELECT llm_init(%s, 7)", [MODEL])
    stream = q(a, "SELECT llm_encode(%s, %s)", " ".join(TEXT), MODEL)
    a.execute("SELECT llm_dataset_from_tokens(%s, 8, dataset => %s, val_fraction => 0.2)", [stream, MODEL])
    a.execute("CALL llm_train(%s, 2, batch_size => 2, dataset => %s, notice_every => 0, run => 'first')",
              [MODEL, MODEL])
    a.execute("SELECT llm_train_step(%s, %s, %s, lr => 1e-3)", [MODEL, TOKENS, TOKENS[1:] + [-100]])
    checkpoint = q(a, "SELECT llm_checkpoint_save(%s, 'alice''s')", MODEL)
    a.execute("SELECT llm_autograd_mode('full')")
    a.execute("SELECT llm_loss(%s, %s, %s)", [MODEL, TOKENS, TOKENS[1:] + [-100]])
    a.execute("SELECT llm_autograd_mode('off')")
    return checkpoint


def test_the_roles_and_their_settings(admin, classroom):
    roles = dict(admin.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN "
                               "('llm_learner', 'llm_instructor')").fetchall())
    assert roles == {"llm_learner": False, "llm_instructor": False}
    admin.execute("SELECT llm_classroom_init()")          # idempotent
    b = classroom[BOB]
    assert q(b, "SELECT pg_has_role('llm_learner', 'MEMBER')")
    assert q(b, "SHOW pg_llm.threads") == "1"
    assert q(b, "SHOW statement_timeout") == "10min"
    assert q(b, "SHOW pg_llm.max_tape_rows") == "20000"
    b.execute("SET pg_llm.max_tape_rows = 0")       # before the library is loaded: a placeholder,
    b.execute("SELECT llm_info()")                    # which loading it refuses (with a WARNING)
    assert q(b, "SHOW pg_llm.max_tape_rows") == "20000"
    expect_error(b, "SET pg_llm.max_tape_rows = 0", [], "42501", "pg_llm.max_tape_rows")
    assert q(b, "SELECT (current_schemas(false))[1]") == BOB     # a schema of their own, first
    expect_error(b, "SELECT llm_classroom_init()", [], "42501", "superuser")


def test_every_extension_table_has_row_level_security(admin):
    tables = extension_tables(admin)
    assert set(tables) == set(ROW_OWNER), "a table of the extension without an owner rule in this test"
    unprotected = [r[0] for r in admin.execute(
        "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND NOT relrowsecurity", [tables]).fetchall()]
    assert unprotected == []


def test_alice_owns_rows_in_every_table(admin, alice):
    counts = alice_rows(admin)
    assert all(counts.values()), f"tables alice has no rows in: {counts}"


def test_bob_sees_none_of_alices_rows(admin, classroom, alice):
    b = classroom[BOB]
    for table in extension_tables(admin):
        assert q(b, f"SELECT count(*) FROM {table}") == 0, f"bob sees rows of {table}"
    for view in ("llm_tape", "llm_tensor_rt", "llm_checkpoints"):
        assert q(b, f"SELECT count(*) FROM {view}") == 0, f"bob sees rows of {view}"


def test_bob_changes_and_deletes_none_of_alices_rows(admin, classroom, alice):
    b = classroom[BOB]
    before = alice_rows(admin)
    for table in extension_tables(admin):
        column = plain_column(admin, table)
        assert b.execute(f'UPDATE {table} SET "{column}" = "{column}"').rowcount == 0, table
        assert b.execute(f"DELETE FROM {table}").rowcount == 0, table
    assert alice_rows(admin) == before
    # nor can he add rows to her model, tokenizer or checkpoint, or in her name
    expect_error(b, "INSERT INTO llm_param (model, name, data) VALUES (%s, 'ln_f.bias', llm_fill('{16}', 0))",
                 [MODEL], "42704", "unknown model")      # (its row check cannot see the model)
    expect_error(b, "INSERT INTO llm_train_log (model, step, lr, weight_decay, beta1, beta2, eps) "
                 "VALUES (%s, 1, 1, 0, 0.9, 0.9, 1e-8)", [MODEL], "42501", "row-level security")
    expect_error(b, "INSERT INTO llm_bpe_vocab (model, token, id) VALUES (%s, 'zz', 299)", [MODEL], "42501")
    expect_error(b, "INSERT INTO llm_checkpoint_param (checkpoint, name, data, step) "
                 "VALUES (%s, 'x', '[1]', 0)", [alice], "42501")
    expect_error(b, "INSERT INTO llm_dataset (tokens, target, owner) VALUES ('{1}', '{2}', %s)", [ALICE], "42501")


def test_bob_gets_a_clear_error_from_every_function_on_alices_model(classroom, alice):
    b = classroom[BOB]
    unknown = [
        ("SELECT llm_logits(%s, %s)", [MODEL, TOKENS]),
        ("SELECT llm_generate('the', 4, model => %s, seed => 1)", [MODEL]),
        ("SELECT llm_generate_tokens(%s, %s, 2, 0)", [MODEL, TOKENS]),
        ("SELECT llm_train_step(%s, %s, %s, lr => 1e-3)", [MODEL, TOKENS, TOKENS]),
        ("SELECT llm_adamw_step(%s, 1e-3)", [MODEL]),
        ("SELECT * FROM llm_gradients(%s, %s, %s)", [MODEL, TOKENS, TOKENS]),
        ("CALL llm_train(%s, 1, batch_size => 1, dataset => %s, notice_every => 0)", [MODEL, MODEL]),
        ("SELECT llm_init(%s, 1)", [MODEL]),
        ("SELECT llm_checkpoint_save(%s)", [MODEL]),
        ("SELECT llm_checkpoint_load(%s, %s)", [MODEL, alice]),
        ("SELECT * FROM llm_share(%s)", [MODEL]),
        ("SELECT * FROM llm_beam_search_tokens(%s, %s, 2, 2)", [MODEL, TOKENS]),
    ]
    for sql, params in unknown:
        expect_error(b, sql, params, "42704", MODEL)
    expect_error(b, "SELECT llm_encode('the cat', %s)", [MODEL], "42704", MODEL)
    b.execute("SELECT llm_dataset_from_tokens('{1,2,3,4,5,6,7,8,9,10}', 4, dataset => 'cls_bob_data', "
              "val_fraction => 0.5)")
    expect_error(b, "SELECT * FROM llm_eval(%s, 'val', dataset => 'cls_bob_data')", [MODEL], "42704", MODEL)
    # a checkpoint of hers, loaded into a model of his: there is no such checkpoint for him
    b.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
              "VALUES ('cls_bob_gpt', 1, 2, 16, 16, 300)")
    expect_error(b, "SELECT llm_checkpoint_load('cls_bob_gpt', %s)", [alice], "42704", f"no checkpoint {alice}")
    expect_error(b, "SELECT llm_checkpoint_delete(%s)", [alice], "42704")


def test_names_have_one_owner(classroom, alice):
    b = classroom[BOB]
    expect_error(b, "INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES (%s, 1, 2, 16, 16, 300)", [MODEL], "23505", MODEL, f"belongs to {ALICE}")
    expect_error(b, "SELECT llm_bpe_train(%s, %s::text[], 300)", [MODEL, TEXT], "23505", f"belongs to {ALICE}")
    expect_error(b, "SELECT llm_dataset_from_tokens('{1,2,3,4}', 2, dataset => %s)", [MODEL], "23505",
                 f"belongs to {ALICE}")


def test_the_weights_are_seen_exactly_with_the_models_row(admin, classroom, alice):
    """What the shared weight cache relies on: a role that sees a model's llm_model_config
    row sees all of its llm_param rows, and one that does not sees none -- before and
    after sharing, for every role."""
    everything = dict(admin.execute("SELECT model, count(*) FROM llm_param GROUP BY model").fetchall())

    def check():
        for role, c in classroom.items():
            models = {r[0] for r in c.execute("SELECT model FROM llm_model_config").fetchall()}
            params = dict(c.execute("SELECT model, count(*) FROM llm_param GROUP BY model").fetchall())
            assert set(params) <= models, f"{role} sees weights of models it cannot see"
            for model in models:
                assert params.get(model, 0) == everything.get(model, 0), f"{role} sees part of {model}"
    check()
    classroom[ALICE].execute("SELECT * FROM llm_share(%s)", [MODEL])
    try:
        check()
    finally:
        classroom[ALICE].execute("SELECT * FROM llm_share(%s, false)", [MODEL])
    check()


def test_a_shared_model_is_read_only(admin, classroom, alice, tmp_path):
    a, b = classroom[ALICE], classroom[BOB]
    want = q(a, "SELECT llm_generate('the', 6, model => %s, seed => 3)", MODEL)
    version = q(a, "SELECT version FROM llm_model_config WHERE model = %s", MODEL)
    shared = a.execute("SELECT kind, name FROM llm_share(%s)", [MODEL]).fetchall()
    # the weights did not change: their version (the cache's key) stays
    assert q(a, "SELECT version FROM llm_model_config WHERE model = %s", MODEL) == version
    assert shared == [("model", MODEL), ("tokenizer", MODEL), ("dataset", MODEL)]
    try:
        before = alice_rows(admin)
        assert q(b, "SELECT llm_generate('the', 6, model => %s, seed => 3)", MODEL) == want
        assert q(b, "SELECT count(*) FROM llm_param WHERE model = %s", MODEL) == before["llm_param"]
        assert q(b, "SELECT count(*) FROM llm_dataset WHERE dataset = %s", MODEL) == before["llm_dataset"]
        assert q(b, "SELECT loss FROM llm_eval(%s, 'val', dataset => %s)", MODEL, MODEL) > 0
        assert q(b, "SELECT count(*) FROM llm_checkpoint") == 0           # her history stays hers
        for sql, params in [
            ("SELECT llm_train_step(%s, %s, %s, lr => 1e-3)", [MODEL, TOKENS, TOKENS]),
            ("SELECT llm_adamw_step(%s, 1e-3)", [MODEL]),
            ("CALL llm_train(%s, 1, batch_size => 1, dataset => %s, notice_every => 0)", [MODEL, MODEL]),
            ("SELECT llm_init(%s, 1)", [MODEL]),
            ("SELECT pg_llm_import_safetensors('/nonexistent.safetensors', %s)", [MODEL]),
            ("SELECT llm_zero_grad(%s)", [MODEL]),
            ("SELECT llm_accumulate_grads(%s)", [MODEL]),
        ]:
            expect_error(b, sql, params, "42501", f"belongs to {ALICE}")
        weights = tmp_path / "weights.safetensors"      # her own weights, sent over the connection
        save_file(dict(b.execute("SELECT name, data FROM llm_param WHERE model = %s", [MODEL]).fetchall()),
                  str(weights))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"belongs to {ALICE}"):
            pg_llm_lab.import_hf(b, weights, MODEL, config=q(b, "SELECT llm_hf_config(%s)", MODEL),
                                 progress=False)
        expect_error(b, "SELECT * FROM llm_share(%s, false)", [MODEL], "42501", "owner or an instructor")
        for table in extension_tables(admin):
            column = plain_column(admin, table)
            b.execute(f'UPDATE {table} SET "{column}" = "{column}"')
            b.execute(f"DELETE FROM {table}")
        assert alice_rows(admin) == before
        # a copy of his own he may train: a checkpoint of the shared model, loaded into his
        copy = q(b, "SELECT llm_checkpoint_save(%s, 'a copy')", MODEL)
        b.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                  "VALUES ('cls_bob_copy', 1, 2, 16, 16, 300)")
        assert q(b, "SELECT llm_checkpoint_load('cls_bob_copy', %s)", copy) == before["llm_param"]
        assert q(b, "SELECT llm_train_step('cls_bob_copy', %s, %s, lr => 1e-3)", TOKENS, TOKENS) > 0
    finally:
        a.execute("SELECT * FROM llm_share(%s, false)", [MODEL])
    expect_error(b, "SELECT llm_logits(%s, %s)", [MODEL, TOKENS], "42704")


def test_the_instructor_reads_everything_and_changes_nothing(admin, classroom, alice):
    t = classroom[TEACHER]
    assert q(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND query <> '<insufficient privilege>'",
             ALICE) == 1
    for table in extension_tables(admin):
        assert q(t, f"SELECT count(*) FROM {table}") == q(admin, f"SELECT count(*) FROM {table}"), table
    assert alice_rows(t) == alice_rows(admin)
    expect_error(t, "SELECT llm_train_step(%s, %s, %s, lr => 1e-3)", [MODEL, TOKENS, TOKENS], "42501")
    expect_error(t, "UPDATE llm_model_config SET n_head = 1 WHERE model = %s", [MODEL], "42501",
                 "may only be shared or unshared")
    assert t.execute("DELETE FROM llm_param WHERE model = %s", [MODEL]).rowcount == 0
    # ... but may share and unshare a learner's model
    t.execute("SELECT * FROM llm_share(%s)", [MODEL])
    assert q(classroom[BOB], "SELECT count(*) FROM llm_model_config WHERE model = %s", MODEL) == 1
    t.execute("SELECT * FROM llm_share(%s, false)", [MODEL])
    assert q(classroom[BOB], "SELECT count(*) FROM llm_model_config WHERE model = %s", MODEL) == 0


def test_null_and_unknown_arguments(admin, classroom):
    b = classroom[BOB]
    for sql in ("SELECT * FROM llm_share(NULL)", "SELECT * FROM llm_share('x', NULL)",
                "SELECT llm_require_model_owner(NULL)", "SELECT llm_classroom_add_learner(NULL)",
                "SELECT llm_classroom_add_learner('x', NULL)", "SELECT llm_classroom_apply_settings(NULL)"):
        expect_error(admin, sql, [], "22004")
    expect_error(admin, "SELECT llm_require_superuser(NULL)", [], "22004")
    expect_error(admin, "SELECT * FROM llm_share('no such model')", [], "42704", "no such model")
    admin.execute("SELECT llm_require_model_owner('no such model')")      # the caller's to report
    expect_error(admin, "SELECT llm_classroom_add_learner(current_user)", [], "22023", "bypasses row-level security")
    for sql in ("SELECT llm_classroom_add_learner('cls_mallory')", f"SELECT llm_classroom_apply_settings('{ALICE}')",
                "SELECT llm_require_superuser('f')"):
        expect_error(b, sql, [], "42501", "only a superuser")


def test_the_tape_is_capped(admin):
    """pg_llm.max_tape_rows: a tape bigger than it is refused with a clear error and
    forgotten, and the session goes on."""
    admin.execute("SET pg_llm.max_tape_rows = 5")
    try:
        admin.execute("SELECT llm_autograd_mode('full')")
        admin.execute("SELECT llm_prune_autograd_state()")
        admin.execute("SELECT llm_gelu(llm_tensor_rt_leaf('[1, 2]', 'x'))")      # 2 tensors, 1 op
        expect_error(admin, "SELECT llm_gelu(llm_gelu(llm_gelu('[3, 4]')))", [], "54000",
                     "pg_llm.max_tape_rows = 5")
        admin.execute("SELECT llm_gelu(llm_tensor_rt_leaf('[5, 6]', 'y'))")    # a fresh tape
        assert admin.execute("SELECT op, inputs FROM llm_tape").fetchall() == [("llm_gelu", [1])]
    finally:
        admin.execute("SELECT llm_autograd_mode('off')")
        admin.execute("RESET pg_llm.max_tape_rows")


def run_cli(db_url, *args):
    env = dict(os.environ, DATABASE_URL=db_url)
    return subprocess.run([sys.executable, "-m", "pg_llm_lab.cli", "classroom", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_classroom_command(db_url, admin):
    """init, add-learner (which prints each learner's DATABASE_URL) and status (which
    shows that learner's session, what it runs and its memory)."""
    drop_role(admin, "cls_carol")
    try:
        assert run_cli(db_url, "init").returncode == 0
        added = run_cli(db_url, "add-learner", "cls_carol")
        assert added.returncode == 0, added.stderr
        url = re.search(r"cls_carol: (\S+)", added.stdout)[1]
        assert url.startswith("postgresql://cls_carol:")
        with psycopg.connect(url, autocommit=True) as carol:
            assert q(carol, "SELECT current_user") == "cls_carol"
            carol.execute("SET application_name = 'carols notebook'")
            status = run_cli(db_url, "status")
            assert status.returncode == 0, status.stderr
            line = next(line for line in status.stdout.splitlines() if "cls_carol" in line)
            assert "learner" in line and " MB" in line, status.stdout
        assert run_cli(db_url, "add-learner").returncode == 2
    finally:
        drop_role(admin, "cls_carol")


@pytest.mark.slow
def test_a_learner_runs_the_notebooks(db_url, admin, classroom):
    """A learner role (no superuser, the class's settings) runs the notebooks that make
    and train a tokenizer, record a whole GPT-2's tape and train on text with checkpoints
    (01, 06, 08; PG_LLM_LAB_QUICK=1), and what they made is theirs alone."""
    drop_role(admin, "cls_erin")
    admin.execute("SELECT llm_classroom_add_learner('cls_erin')")
    env = {**os.environ, "DATABASE_URL": make_conninfo(db_url, user="cls_erin"), "JUPYTERHUB_USER": "cls_erin",
           "PG_LLM_LAB_QUICK": "1", "PG_LLM_LAB_OFFLINE": "1"}
    chain = ("import json, sys; sys.path.insert(0, sys.argv[1]); import notebook_runs; "
             "print(json.dumps(notebook_runs.run_chain(sys.argv[2:])))")
    try:
        done = subprocess.run([sys.executable, "-c", chain, os.path.dirname(__file__),
                               "01_text_and_tokens", "06_the_gpt2_tape", "08_training_on_text"],
                              env=env, capture_output=True, text=True, timeout=1200)
        results = json.loads(done.stdout.strip().splitlines()[-1])
        assert [r["error"] for r in results] == [None] * 3, results
        owned = {table: q(admin, f"SELECT count(*) FROM {table} WHERE owner = 'cls_erin'")
                 for table in ("llm_model_config", "llm_tokenizer", "llm_dataset", "llm_checkpoint")}
        assert all(owned.values()), owned
        assert q(classroom[BOB], "SELECT count(*) FROM llm_model_config WHERE model LIKE %s", "cls\\_erin%") == 0
    finally:
        admin.execute("DELETE FROM llm_model_config WHERE owner = 'cls_erin'")
        admin.execute("DELETE FROM llm_tokenizer WHERE owner = 'cls_erin'")
        admin.execute("DELETE FROM llm_dataset WHERE owner = 'cls_erin'")
        admin.execute("DELETE FROM llm_checkpoint WHERE owner = 'cls_erin'")
        drop_role(admin, "cls_erin")


def test_a_run_draws_from_its_dataset_only(classroom):
    """Two datasets with the same split, and bob's default one (named after him): llm_train
    and llm_eval read the one named, and by default his."""
    b, model = classroom[BOB], "cls_bob_ds"
    b.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
              "VALUES (%s, 1, 2, 16, 16, 64)", [model])
    b.execute("SELECT llm_init(%s, 3)", [model])
    ids = {}
    for dataset, first in (("cls_bob_ds_a", 1), ("cls_bob_ds_b", 30), (BOB, 40)):
        b.execute("SELECT llm_dataset_from_tokens(%s, 4, dataset => %s, val_fraction => 0.25)",
                  [list(range(first, first + 20)), dataset])
        ids[dataset] = {r[0] for r in b.execute(
            "SELECT id FROM llm_dataset WHERE dataset = %s AND split = 'train'", [dataset]).fetchall()}
    for dataset, named in (("cls_bob_ds_a", ", dataset => 'cls_bob_ds_a'"), (BOB, "")):
        since = q(b, "SELECT coalesce(max(id), 0) FROM llm_train_log")
        b.execute(f"CALL llm_train('{model}', 3, batch_size => 4, notice_every => 0{named})")
        drawn = {i for (batch,) in b.execute("SELECT batch FROM llm_train_log WHERE id > %s", [since]) for i in batch}
        assert drawn and drawn <= ids[dataset], (dataset, drawn)
    val = {d: q(b, "SELECT examples FROM llm_eval(%s, 'val', dataset => %s)", model, d)
           for d in ("cls_bob_ds_a", "cls_bob_ds_b")}
    assert val["cls_bob_ds_a"] == q(b, "SELECT count(*) FROM llm_dataset WHERE dataset = 'cls_bob_ds_a' "
                                       "AND split = 'val'") == val["cls_bob_ds_b"] > 0
    assert q(b, "SELECT examples FROM llm_eval(%s, 'val')", model) == val["cls_bob_ds_a"]
    expect_error(b, "CALL llm_train(%s, 1, dataset => 'cls_bob_none')", [model], "P0002",
                 'dataset "cls_bob_none" has no examples in split "train"')
