"""How to write a training state back to llm_param: the strategies, timed.

    python bench/bench_writeback.py                      # lab model and GPT-2 small
    python bench/bench_writeback.py --models lab --repeat 5

A training step ends by writing the model's weights and AdamW moments (and
maybe its gradients) back to llm_param.  The issue measured one UPDATE of
data, grad, m and v at ~3 s for the lab model and ~52 s for GPT-2 small,
against a PyTorch step of ~0.17 s and ~1.7 s.  This bench times the ways to
do it, each a transaction (statement + COMMIT) on a copy of llm_param in the
schema bench_writeback, with new values made in memory by llm_fill (as the
write-back copies them out of backend memory):

  values only        SELECT the new tensors, write nothing: the floor
  4, old triggers    UPDATE data, grad, m, v of llm_param as it was before
                     (shape a generated column, the row check in PL/pgSQL,
                     the version bump reading NEW TABLE and OLD TABLE): the
                     issue's measurement
  3, old triggers    the same with grad set NULL (a training loop does not
                     write gradients)
  4, now / 3, now    llm_param as it is now: the row check in C (tensor
                     headers only, the row handed on uncopied), shape a
                     plain column it fills in (computing a generated column
                     makes the executor copy the whole new row), the
                     version bump reading OLD TABLE only (a NEW TABLE holds
                     a copy of every new tensor, spilled to disk)
  3, no row check    as "3, now" without the row check: what checking costs
  moments apart      data in the llm_param copy, m and v in a table of their
                     own without triggers: two statements
  one row a stmt     as "3, now", one UPDATE per parameter
  llm_adamw_step     the real thing: llm_adamw_step loads the state, clips,
                     updates, logs, and writes data, grad, m and v back
                     through llm_train_state_tensor() (compare "4, now");
                     its DEBUG1 report says how long each part took

For each: the wall time, the backend's CPU time (user + system, from
/proc: what the statement itself costs, even on a busy machine), the WAL it
wrote and the temporary files it spilled (pg_stat_database.temp_bytes), each
the median of --repeat runs after one warm-up run that fills grad, m and v.
The copy tables are dropped after each strategy so dead rows do not pile up.
CPU time needs the server on this machine (the embedded one is).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import psycopg

import pg_llm_lab

MODELS = {  # name: (n_layer, n_head, n_embd, n_positions, vocab_size)
    "lab": (4, 4, 128, 128, 50257),
    "small": (12, 12, 768, 1024, 50257),
}
SCHEMA = "bench_writeback"

# The row trigger llm_param had before the write-back work (sql/30_model.sql).
OLD_ROW_CHECK = """
CREATE FUNCTION bench_writeback.old_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    expected int[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM llm_model_config WHERE model = NEW.model) THEN
        RAISE EXCEPTION 'unknown model';
    END IF;
    SELECT s.shape INTO expected FROM llm_param_shapes(NEW.model) s WHERE s.name = NEW.name;
    IF expected IS NULL THEN
        RAISE EXCEPTION 'unknown name';
    END IF;
    IF llm_shape(NEW.data) <> expected THEN
        RAISE EXCEPTION 'bad shape';
    END IF;
    IF llm_shape(NEW.grad) <> expected OR llm_shape(NEW.m) <> expected
       OR llm_shape(NEW.v) <> expected THEN
        RAISE EXCEPTION 'bad shape';
    END IF;
    RETURN NEW;
END $$;
"""
# The version bump llm_param had for UPDATE: both transition tables.
OLD_BUMP = """
CREATE FUNCTION bench_writeback.old_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE llm_model_config SET version = nextval('llm_param_version_seq')
    WHERE model IN (SELECT model FROM new_rows UNION SELECT model FROM old_rows);
    RETURN NULL;
END $$;
"""


def setup_copy(conn, model: str, row_check: str | None, bump: str, moments_apart: bool = False) -> None:
    """bench_writeback.param: a copy of the model's llm_param rows with the given triggers."""
    conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    conn.execute(f"CREATE SCHEMA {SCHEMA}")
    conn.execute(OLD_ROW_CHECK)
    conn.execute(OLD_BUMP)
    if bump == "new and old":  # llm_param as it was: shape a generated column
        conn.execute(f"CREATE TABLE {SCHEMA}.param (model text REFERENCES llm_model_config, name text, "
                     "shape int[] GENERATED ALWAYS AS (llm_shape(data)) STORED, data tensor NOT NULL, "
                     "grad tensor, m tensor, v tensor, step int NOT NULL DEFAULT 0, PRIMARY KEY (model, name))")
        conn.execute(f"INSERT INTO {SCHEMA}.param (model, name, data, grad, m, v, step) "
                     "SELECT model, name, data, grad, m, v, step FROM llm_param WHERE model = %s", [model])
    else:
        conn.execute(f"CREATE TABLE {SCHEMA}.param (LIKE llm_param INCLUDING ALL)")
        conn.execute(f"ALTER TABLE {SCHEMA}.param ADD FOREIGN KEY (model) REFERENCES llm_model_config")
        conn.execute(f"INSERT INTO {SCHEMA}.param SELECT * FROM llm_param WHERE model = %s", [model])
    if moments_apart:
        conn.execute(f"CREATE TABLE {SCHEMA}.moments (model text, name text, m tensor, v tensor, "
                     "step int, PRIMARY KEY (model, name))")
        conn.execute(f"INSERT INTO {SCHEMA}.moments SELECT model, name, m, v, step FROM {SCHEMA}.param")
    if row_check:
        conn.execute(f"CREATE TRIGGER row_check BEFORE INSERT OR UPDATE ON {SCHEMA}.param "
                     f"FOR EACH ROW EXECUTE FUNCTION {row_check}()")
    if bump == "new and old":
        conn.execute(f"CREATE TRIGGER bump AFTER UPDATE ON {SCHEMA}.param "
                     "REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows "
                     f"FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.old_bump()")
    else:  # the extension's own UPDATE triggers, as sql/30_model.sql defines them now
        for trigger in conn.execute(
                "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t "
                "WHERE t.tgrelid = 'llm_param'::regclass AND NOT t.tgisinternal "
                "AND t.tgname <> 'llm_param_check' AND pg_get_triggerdef(t.oid) LIKE '%UPDATE%'"):
            conn.execute(trigger[0].replace(" ON public.llm_param ", f" ON {SCHEMA}.param ")
                         .replace(" ON llm_param ", f" ON {SCHEMA}.param "))


def fill(column: str, value: float) -> str:
    return f"{column} = llm_fill(p.shape, {value} + p.step * 1e-3)"


def backend_cpu_s(pid: int) -> float:
    """utime + stime of a server process, in seconds (NaN if /proc does not show it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def counters(conn) -> tuple[float, int, int]:
    """(backend CPU s, WAL position, temp bytes so far)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    wal, temp = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, temp_bytes FROM pg_stat_database "
                             "WHERE datname = current_database()").fetchone()
    return backend_cpu_s(conn.info.backend_pid), int(wal), int(temp)


@dataclass
class Run:
    wall: float
    cpu: float
    wal_mb: float
    temp_mb: float


def timed(conn, statements: list[tuple[str, list]]) -> Run:
    cpu0, wal0, temp0 = counters(conn)
    start = time.perf_counter()
    with conn.transaction():
        for sql, params in statements:
            conn.execute(sql, params)
    wall = time.perf_counter() - start
    cpu1, wal1, temp1 = counters(conn)
    return Run(wall, cpu1 - cpu0, (wal1 - wal0) / 2**20, (temp1 - temp0) / 2**20)


def median_run(runs: list[Run]) -> Run:
    return Run(*(statistics.median(getattr(r, f) for r in runs) for f in ("wall", "cpu", "wal_mb", "temp_mb")))


def show(name: str, r: Run, extra: str = "") -> None:
    print(f"  {name:18s} wall {r.wall:7.3f} s   cpu {r.cpu:7.3f} s   WAL {r.wal_mb:7.0f} MB   "
          f"temp {r.temp_mb:6.0f} MB{extra}", flush=True)


def strategy_statements(name: str, model: str, names: list[str]) -> list[tuple[str, list]]:
    t = f"{SCHEMA}.param"
    three = f"{fill('data', 0.5)}, grad = NULL, {fill('m', 0.1)}, {fill('v', 0.01)}, step = p.step + 1"
    if name == "values only":
        return [(f"SELECT sum((llm_shape(llm_fill(p.shape, 0.5)))[1] + (llm_shape(llm_fill(p.shape, 0.1)))[1]"
                 f" + (llm_shape(llm_fill(p.shape, 0.01)))[1]) FROM {t} p WHERE p.model = %s", [model])]
    if name.startswith("4,"):
        return [(f"UPDATE {t} p SET {fill('data', 0.5)}, {fill('grad', 0.2)}, {fill('m', 0.1)}, "
                 f"{fill('v', 0.01)}, step = p.step + 1 WHERE p.model = %s", [model])]
    if name == "moments apart":
        return [(f"UPDATE {t} p SET {fill('data', 0.5)}, grad = NULL WHERE p.model = %s", [model]),
                (f"UPDATE {SCHEMA}.moments o SET m = llm_fill(p.shape, 0.1 + o.step * 1e-3), "
                 f"v = llm_fill(p.shape, 0.01 + o.step * 1e-3), step = o.step + 1 "
                 f"FROM {t} p WHERE o.model = %s AND p.model = o.model AND p.name = o.name", [model])]
    if name == "one row a stmt":
        return [(f"UPDATE {t} p SET {three} WHERE p.model = %s AND p.name = %s", [model, n]) for n in names]
    return [(f"UPDATE {t} p SET {three} WHERE p.model = %s", [model])]


STRATEGIES = {  # name: (row trigger, version bump, moments apart)
    "values only": (None, "now", False),
    "4, old triggers": (f"{SCHEMA}.old_check", "new and old", False),
    "3, old triggers": (f"{SCHEMA}.old_check", "new and old", False),
    "4, now": ("llm_param_check", "now", False),
    "3, now": ("llm_param_check", "now", False),
    "3, no row check": (None, "now", False),
    "moments apart": ("llm_param_check", "now", True),
    "one row a stmt": ("llm_param_check", "now", False),
}


def adamw_step(conn, model: str) -> tuple[Run, str]:
    """One llm_adamw_step: its Run, and its DEBUG1 report of where the time went."""
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute("SET client_min_messages = debug1")
    run = timed(conn, [("SELECT llm_adamw_step(%s, 1e-4)", [model])])
    conn.execute("RESET client_min_messages")
    return run, [n for n in notices if n.startswith("llm_adamw_step:")][-1]


def bench_model(conn, label: str, repeat: int, strategies: list[str]) -> dict:
    model = f"bench_wb_{label}"
    n_layer, n_head, n_embd, n_pos, vocab = MODELS[label]
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [model])
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES (%s, %s, %s, %s, %s, %s)", [model, n_layer, n_head, n_embd, n_pos, vocab])
    conn.execute("SELECT llm_init(%s, 1)", [model])
    names = [r[0] for r in conn.execute("SELECT name FROM llm_param WHERE model = %s", [model])]
    numel = conn.execute("SELECT sum((SELECT exp(sum(ln(d))) FROM unnest(shape) d))::bigint "
                         "FROM llm_param WHERE model = %s", [model]).fetchone()[0]
    print(f"\n{label}: {numel / 1e6:.1f}M parameters, {len(names)} tensors, "
          f"{numel * 4 / 2**20:.0f} MB a copy")
    results = {}
    for name in strategies:
        if name == "llm_adamw_step":
            conn.execute("UPDATE llm_param SET grad = llm_fill(shape, 1e-3) WHERE model = %s", [model])
            runs = [adamw_step(conn, model) for _ in range(repeat + 1)][1:]
            results[name] = median_run([r for r, _ in runs])
            show(name, results[name], "\n    " + "\n    ".join(report for _, report in runs))
            continue
        row_check, bump, apart = STRATEGIES[name]
        setup_copy(conn, model, row_check, bump, apart)
        statements = strategy_statements(name, model, names)
        timed(conn, statements)  # warm-up: grad, m and v now hold values
        results[name] = median_run([timed(conn, statements) for _ in range(repeat)])
        show(name, results[name])
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [model])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", default=[*STRATEGIES, "llm_adamw_step"],
                        choices=[*STRATEGIES, "llm_adamw_step"])
    args = parser.parse_args()

    with pg_llm_lab.connect() as conn:
        settings = {k: conn.execute(f"SHOW {k}").fetchone()[0]
                    for k in ("synchronous_commit", "max_wal_size", "wal_compression", "full_page_writes")}
        print("server:", ", ".join(f"{k}={v}" for k, v in settings.items()))
        table = {label: bench_model(conn, label, args.repeat, args.strategies) for label in args.models}

    print("\n| strategy | " + " | ".join(f"{m}: wall s, cpu s, WAL MB, temp MB" for m in args.models) + " |")
    print("| --- | " + " | ".join("---" for _ in args.models) + " |")
    for name in args.strategies:
        print(f"| {name} | " + " | ".join(
            f"{r.wall:.2f}, {r.cpu:.2f}, {r.wal_mb:.0f}, {r.temp_mb:.0f}" for r in (table[m][name] for m in args.models))
            + " |")


if __name__ == "__main__":
    main()
