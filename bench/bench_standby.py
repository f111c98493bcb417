"""What a hot standby costs and how soon it follows: WAL per write-back, replay lag.

    python bench/bench_standby.py                  # the lab model and GPT-2 small
    python bench/bench_standby.py --models lab --repeat 3

A private primary (the embedded PostgreSQL 18) and a hot standby of it
(`pg_llm_lab.server.start_standby`: pg_basebackup -R, WAL streamed), both in a
temporary directory.  For each model, random weights (llm_init), then
--repeat times one `llm_train_step` on the primary, which writes the weights
and the AdamW moments back to llm_param in one transaction:

  wal MB        the WAL the write-back's transaction wrote (pg_current_wal_insert_lsn before
                and after): what the standby receives, and what a WAL archive keeps
  step s        the call on the primary, write-back and COMMIT included
  replayed s    from the primary's COMMIT until the standby has replayed it
  first token s from that COMMIT until the standby's first generated token from the new
                weights (replay, then its backend loading the new version)

The medians of --repeat runs.  Replay runs while the primary is idle here;
a primary that trains without pause streams the same WAL every save_every steps.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

import pg_llm_lab
from pg_llm_lab import server

MODELS = {  # name: (n_layer, n_head, n_embd, n_positions, vocab_size)
    "lab": (4, 4, 128, 128, 50257),
    "small": (12, 12, 768, 1024, 50257),
}
TOKENS = list(range(1, 65))


def wait_until(standby, condition: str, args=(), timeout: float = 600) -> float:
    """Poll the standby until `condition` (SQL) holds; return the time it did."""
    deadline = time.monotonic() + timeout
    while not standby.execute(f"SELECT {condition}", args).fetchone()[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the standby did not get to {condition} {args} in {timeout} s")
        time.sleep(0.01)
    return time.perf_counter()


def measure(primary, standby, model: str) -> dict:
    before = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
    start = time.perf_counter()
    primary.execute("SELECT llm_train_step(%s, %s, %s, 1e-4)", (model, TOKENS, TOKENS[1:] + [0]))
    committed = time.perf_counter()
    after, version = primary.execute(
        "SELECT pg_current_wal_insert_lsn(), (SELECT version FROM llm_model_config WHERE model = %s)",
        (model,)).fetchone()
    wal = primary.execute("SELECT pg_wal_lsn_diff(%s, %s)", (after, before)).fetchone()[0]
    replayed = wait_until(standby, "pg_last_wal_replay_lsn() >= %s::pg_lsn", (after,))
    wait_until(standby, "(SELECT version FROM llm_model_config WHERE model = %s) = %s", (model, version))
    standby.execute("SELECT llm_generate_tokens(%s, %s, 1, temperature => 0)", (model, TOKENS[:8]))
    first_token = time.perf_counter()
    return {"wal MB": float(wal) / 2**20, "step s": committed - start,
            "replayed s": replayed - committed, "first token s": first_token - committed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lab,small", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_standby_") as tmp:
        primary_url = server.start(Path(tmp) / "primary")
        try:
            pg_llm_lab.connect(primary_url).close()  # CREATE EXTENSION
            standby_url = server.start_standby(primary_url, Path(tmp) / "standby")
            with pg_llm_lab.connect(primary_url) as primary, \
                    psycopg.connect(standby_url, autocommit=True) as standby:
                print(f"{'model':8} {'wal MB':>9} {'step s':>8} {'replayed s':>11} {'first token s':>14}")
                for name in args.models.split(","):
                    model = f"bench_{name}"
                    primary.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions,"
                                    " vocab_size) VALUES (%s, %s, %s, %s, %s, %s)", (model, *MODELS[name]))
                    primary.execute("SELECT llm_init(%s, 1)", (model,))
                    runs = [measure(primary, standby, model) for _ in range(args.repeat)]
                    row = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                    print(f"{name:8} {row['wal MB']:9.1f} {row['step s']:8.2f} {row['replayed s']:11.2f}"
                          f" {row['first token s']:14.2f}")
        finally:
            server.stop(Path(tmp) / "standby")
            server.stop(Path(tmp) / "primary")


if __name__ == "__main__":
    main()
