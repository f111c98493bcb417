"""No argument crashes the server: every function and procedure of pg_llm,
read from the catalog (so a new one is covered by construction), is called by
a learner -- a role that is not a superuser -- with NULL in each argument in
turn and with an empty array in each array argument, the other arguments
plausible values of their types.  Each call must give a result or a proper
ERROR; afterwards the server must be the same server: the postmaster was not
restarted and a second, long-lived session still runs in the same backend.

The calls run in a database of their own (a function that deletes, like
llm_checkpoint_delete, must not touch the other tests' rows), on a model,
tokenizer, dataset and checkpoint made for them.
"""
from __future__ import annotations

import psycopg
import pytest
from fuzz_harness import FuzzDB, Tally
from psycopg.conninfo import make_conninfo

import pg_llm_lab

DATABASE = "pg_llm_fuzz_null_args"
LEARNER = "llm_fuzz_learner"
MODEL = "nullfuzz"
CORPUS = ["hello world", "the cat sat on the mat", "hello there"]
VOCAB = 262          # the tokenizer's size (256 bytes, 5 merges, <|endoftext|>) and the model's

# A plausible value of each argument type (a literal), and of some arguments by their name.
BY_TYPE = {
    "tensor": "[[1,2],[3,4]]", "integer": "2", "bigint": "1", "double precision": "0.5", "real": "1e-05",
    "boolean": "false", "text": "hello", "name": "hello", "jsonb": "{}", "bytea": "\\x0000803f0000803f",
    "integer[]": "{1,2}", "bigint[]": "{1}", "real[]": "{1,2,3,4}", "text[]": "{hello}", "cstring": "[1,2]",
}
BY_NAME = {       # where the name says more than the type: values the calls get past their checks with
    "warmup": "0", "n_layer": "1", "n_head": "2", "d": "8", "vocab": str(VOCAB), "vocab_size": str(VOCAB),
    "decay_steps": "4", "block_size": "4", "save_every": "1", "top_k": "0", "lr": "0.001", "min_lr": "0.0001",
    "temperature": "1", "top_p": "1", "val_fraction": "0", "beta1": "0.9", "beta2": "0.95", "eps": "1e-08",
    "tokens": "{1,2,3,4,5,6}", "targets": "{2,3,4,5,6,7}", "ids": "{0,1}", "previous": "{0,1}",
    "stop_ids": "{261}", "shape": "{2,2}",
    "model": MODEL, "p_model": MODEL, "mode": "meta", "p_format": "safetensors", "part": "data",
    "split": "train", "early_stopping": "false", "corpus_query": "SELECT 'hello world'",
    "name": "wte.weight", "param_name": "wte.weight", "hf_name": "h.0.attn.c_attn.weight",
    "p_key": "n_layer", "token": "a",
}
PATH_ARGUMENTS = {"path", "p_path", "vocab_path", "merges_path", "dir"}


def literal(value: str, type_name: str) -> str:
    return "'" + value.replace("'", "''") + "'::" + type_name


@pytest.fixture(scope="module")
def learner_url(db_url, server_dir):
    """A database of its own with pg_llm and a learner of a class (llm_classroom_add_learner: a
    role IN ROLE llm_learner, under row-level security), who has made a model with a tokenizer,
    a dataset and a checkpoint; the learner's URL."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    url = make_conninfo(db_url, dbname=DATABASE)
    with pg_llm_lab.connect(url) as conn:
        conn.execute("SELECT llm_classroom_add_learner(%s)", [LEARNER])
        conn.execute(f"ALTER ROLE {LEARNER} PASSWORD 'learner'")
    learner = make_conninfo(url, user=LEARNER, password="learner")
    with pg_llm_lab.connect(learner) as conn:
        conn.execute("SELECT llm_bpe_train(%s, %s::text[], %s)", [MODEL, CORPUS, VOCAB])
        conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                     "VALUES (%s, 1, 2, 8, 16, %s)", [MODEL, VOCAB])
        conn.execute("SELECT llm_init(%s, 1)", [MODEL])
        conn.execute("SELECT llm_dataset_from_text(%s, %s, 4)", [MODEL, " ".join(CORPUS * 4)])
        conn.execute("SELECT llm_checkpoint_save(%s, 'before the calls')", [MODEL])
    yield learner
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"DROP ROLE IF EXISTS {LEARNER}")


def extension_routines(db: FuzzDB) -> list[dict]:
    """Every function and procedure of pg_llm: its name, kind and input arguments."""
    rows = db.run("""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname), p.prokind,
               ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) AS t),
               ARRAY(SELECT t.typtype = 'p' FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, i)
                     JOIN pg_type t ON t.oid = a.t ORDER BY a.i),
               coalesce(p.proargnames[1:p.pronargs], '{}')
        FROM pg_depend d
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_llm'
        JOIN pg_proc p ON p.oid = d.objid
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
        ORDER BY p.oid::regprocedure::text""", binary=False).rows
    return [dict(name=name, kind=kind, types=types, pseudo=pseudo,
                 # (an argument without a name gets "")
                 arg_names=(list(names) + [""] * len(types))[:len(types)])
            for name, kind, types, pseudo, names in rows]


def plausible(type_name: str, arg_name: str, pseudo: bool, server_dir) -> str:
    """A literal of a value the argument could well be given (NULL where the type has none)."""
    if pseudo and type_name != "cstring":
        return "NULL::" + type_name
    if type_name == "text" and arg_name in PATH_ARGUMENTS:
        return literal(str(server_dir / ("out" if arg_name == "dir" else "nullfuzz.safetensors")), "text")
    return literal(BY_NAME.get(arg_name, BY_TYPE[type_name]), type_name)


def calls(routine: dict, server_dir) -> list[str]:
    """The statements to try: NULL in each argument, '{}' in each array argument
    (the others plausible); a routine without arguments is called once."""
    values = [plausible(t, a, p, server_dir)
              for t, a, p in zip(routine["types"], routine["arg_names"], routine["pseudo"])]
    variants = []
    for i, type_name in enumerate(routine["types"]):
        variants.append(values[:i] + [f"NULL::{type_name}"] + values[i + 1:])
        if type_name.endswith("[]"):
            variants.append(values[:i] + [f"'{{}}'::{type_name}"] + values[i + 1:])
    if not routine["types"]:
        variants.append([])
    verb = "CALL" if routine["kind"] == "p" else "SELECT"
    return [f"{verb} {routine['name']}({', '.join(args)})" for args in variants]


def test_no_argument_crashes_the_server(db_url, learner_url, server_dir):
    with psycopg.connect(db_url, autocommit=True) as admin, \
            psycopg.connect(learner_url, autocommit=True) as bystander:
        started = admin.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        bystander_pid = bystander.info.backend_pid
        db = FuzzDB(learner_url)
        assert not db.run("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").value
        db.run(f"SET pg_llm.default_model = '{MODEL}'")
        routines = extension_routines(db)
        assert len(routines) > 100, "the catalog lists too few routines of pg_llm"
        tally = Tally("NULL and empty-array arguments, as a learner")
        for routine in routines:
            for statement in calls(routine, server_dir):
                tally.record(db.run(statement), statement)
        db.run("SELECT llm_autograd_mode('off')")
        tally.finish(db)
        db.close()

        assert admin.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started, \
            "the postmaster restarted: a backend crashed"
        assert bystander.execute("SELECT pg_backend_pid()").fetchone()[0] == bystander_pid
