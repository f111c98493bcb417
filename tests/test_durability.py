"""What a learner is told is saved is saved: a crash right after it returns loses nothing.

The lab's server runs synchronous_commit = off, so that the log rows of every
training step need not wait for the disk.  A write-back (llm_train_step,
llm_adamw_step, CALL llm_train), a checkpoint saved or loaded, an import of
weights and a tokenizer trained or loaded must still commit durably.  Each is run on a private cluster, and as soon as
it returns the server is stopped with pg_ctl stop -m immediate (as a crash:
what is not on disk is lost) and started again; what it wrote must be there.

The cluster's WAL writer waits 10 s between its rounds (wal_writer_delay), so
that an asynchronous commit is really lost by the crash: each test commits one
row asynchronously right after the operation, and checks that this row is gone
-- else the crash would have proved nothing.
"""
import shutil
import tempfile
from pathlib import Path

import pytest

import pg_llm_lab
from pg_llm_lab import build, server
from pg_llm_lab.hf import export_hf, import_hf

MODEL = "durable"
TOKENS = [[3, 1, 4, 1, 5, 9, 2, 6]]
TARGETS = [[1, 4, 1, 5, 9, 2, 6, 5]]


class Cluster:
    """A private embedded cluster that can crash."""

    def __init__(self, pgdata: Path):
        self.pgdata = pgdata
        self.url = server.start(pgdata)
        with pg_llm_lab.connect(self.url) as conn:
            conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            conn.execute("SELECT pg_reload_conf()")
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
            conn.execute("CREATE TABLE crash_control (n int)")
            conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                         "VALUES (%s, 1, 2, 8, 16, 16)", [MODEL])
            conn.execute("SELECT llm_init(%s, 1)", [MODEL])
            conn.execute("SELECT llm_dataset_from_tokens(%s, 8)", [list(range(16)) * 4])
            conn.execute("CHECKPOINT")

    def connect(self):
        return pg_llm_lab.connect(self.url)

    def crash_after(self, operation) -> None:
        """Run operation(conn), commit a control row asynchronously, crash, start again."""
        with self.connect() as conn:
            operation(conn)
            control = conn.execute("SELECT coalesce(max(n), 0) + 1 FROM crash_control").fetchone()[0]
            conn.execute("INSERT INTO crash_control VALUES (%s)", [control])
        server.stop(self.pgdata, mode="immediate")
        self.url = server.start(self.pgdata)
        with self.connect() as conn:
            lost = conn.execute("SELECT count(*) = 0 FROM crash_control WHERE n = %s", [control]).fetchone()[0]
        assert lost, "an asynchronous commit survived the crash: the test cannot tell durable from not"

    def value(self, sql, params=()):
        with self.connect() as conn:
            return conn.execute(sql, params).fetchone()[0]


@pytest.fixture(scope="module")
def cluster():
    """A private embedded cluster, also when the other tests use $DATABASE_URL's server (not ours to crash)."""
    root = Path(tempfile.mkdtemp(prefix="pg_llm_durability_"))
    root.chmod(0o777)        # the embedded server's OS user writes the safetensors files here
    with pytest.MonkeyPatch.context() as env:
        env.delenv("DATABASE_URL", raising=False)
        env.delenv("PG_CONFIG", raising=False)
        build.ensure_installed()
        yield Cluster(root / "pgdata")
        server.stop(root / "pgdata")
    shutil.rmtree(root, ignore_errors=True)


def steps(cluster) -> int:
    return cluster.value("SELECT max(step) FROM llm_param WHERE model = %s", [MODEL])


def test_a_train_step_survives_a_crash(cluster):
    before = steps(cluster)
    cluster.crash_after(lambda conn: conn.execute("SELECT llm_train_step(%s, %s, %s, lr => 1e-3)",
                                                  [MODEL, TOKENS, TARGETS]))
    assert steps(cluster) == before + 1
    assert cluster.value("SELECT count(*) FROM llm_train_log WHERE model = %s AND step = %s",
                         [MODEL, before + 1]) == 1


def test_an_adamw_step_survives_a_crash(cluster):
    def step_twice(conn):    # the second step from the gradients the first one stored
        conn.execute("SELECT llm_train_step(%s, %s, %s, lr => 1e-3)", [MODEL, TOKENS, TARGETS])
        conn.execute("SELECT llm_adamw_step(%s, 1e-3)", [MODEL])
    before = steps(cluster)
    cluster.crash_after(step_twice)
    assert steps(cluster) == before + 2


def test_the_write_backs_of_llm_train_survive_a_crash(cluster):
    before = steps(cluster)
    cluster.crash_after(lambda conn: conn.execute(
        "CALL llm_train(%s, steps => 3, batch_size => 2, save_every => 2, notice_every => 0)", [MODEL]))
    assert steps(cluster) == before + 3


def test_a_checkpoint_saved_and_loaded_survives_a_crash(cluster):
    saved = {}

    def save(conn):
        saved["id"] = conn.execute("SELECT llm_checkpoint_save(%s, 'just before the crash')", [MODEL]).fetchone()[0]
    cluster.crash_after(save)
    at = steps(cluster)
    assert cluster.value("SELECT step FROM llm_checkpoint WHERE id = %s", [saved["id"]]) == at
    assert cluster.value("SELECT count(*) FROM llm_checkpoint_param WHERE checkpoint = %s", [saved["id"]]) \
        == cluster.value("SELECT count(*) FROM llm_param WHERE model = %s", [MODEL])

    cluster.crash_after(lambda conn: conn.execute("SELECT llm_train_step(%s, %s, %s, lr => 1e-3)",
                                                  [MODEL, TOKENS, TARGETS]))
    assert steps(cluster) == at + 1
    cluster.crash_after(lambda conn: conn.execute("SELECT llm_checkpoint_load(%s, %s)", [MODEL, saved["id"]]))
    assert steps(cluster) == at
    assert cluster.value("SELECT bool_and(llm_bytea(p.data) = llm_bytea(c.data)) FROM llm_param p JOIN llm_checkpoint_param c "
                         "ON c.name = p.name AND c.checkpoint = %s WHERE p.model = %s", [saved["id"], MODEL])


def test_imports_survive_a_crash(cluster):
    folder = cluster.pgdata.parent / "export"
    with cluster.connect() as conn:
        export_hf(conn, MODEL, folder, progress=False)
    cluster.crash_after(lambda conn: conn.execute("SELECT llm_import_hf(%s, 'durable_sql')", [str(folder)]))
    cluster.crash_after(lambda conn: import_hf(conn, folder, "durable_py", progress=False))
    for imported in ("durable_sql", "durable_py"):
        assert cluster.value("SELECT bool_and(llm_bytea(i.data) = llm_bytea(p.data)) AND count(*) = (SELECT count(*) FROM "
                             "llm_param_shapes(%s)) FROM llm_param i JOIN llm_param p ON p.name = i.name "
                             "AND p.model = %s WHERE i.model = %s", [MODEL, MODEL, imported]), imported


def test_tokenizers_trained_and_loaded_survive_a_crash(cluster):
    folder = cluster.pgdata.parent / "tokenizer"
    corpus = ["the cat sat on the mat", "the dog sat on the log"]
    cluster.crash_after(lambda conn: conn.execute("SELECT llm_bpe_train('durable_bpe', %s::text[], 270)", [corpus]))
    with cluster.connect() as conn:
        conn.execute("SELECT llm_export_tokenizer('durable_bpe', %s)", [str(folder)])
    cluster.crash_after(lambda conn: conn.execute("SELECT pg_llm_load_bpe(%s, %s, 'durable_loaded')",
                                                  [str(folder / "vocab.json"), str(folder / "merges.txt")]))
    for tokenizer in ("durable_bpe", "durable_loaded"):
        assert cluster.value("SELECT vocab_size FROM llm_tokenizer_info(%s)", [tokenizer]) == 270, tokenizer
        assert cluster.value("SELECT llm_encode('the cat', %s)", [tokenizer]) \
            == cluster.value("SELECT llm_encode('the cat', 'durable_bpe')")
