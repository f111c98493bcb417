"""What the durable commits cost: a write-back, a training step and a
checkpoint that wait for the disk, against the same transaction committed
asynchronously.

    python bench/bench_durable.py                      # lab model and GPT-2 small
    python bench/bench_durable.py --models lab --repeat 5

The lab's server runs synchronous_commit = off; what a learner is told is
saved (a write-back, a checkpoint, an import, a tokenizer) calls llm_commit_durably(),
which turns it on for that transaction: its COMMIT waits until the WAL is on
disk.  Each operation runs as BEGIN; <operation>; COMMIT, timed in two ways,
taking turns:

  durable       as the extension does it
  asynchronous  the same, with SET LOCAL synchronous_commit = off after the
                operation (the last SET LOCAL wins): what it cost before

The operations: llm_adamw_step (one write-back of data, grad, m and v),
llm_train_step (a step: forward, backward, AdamW, write-back, log), and
llm_checkpoint_save.  A step of CALL llm_train that does not write back
commits only its log rows, asynchronously as before: it costs nothing more.
For each: the median wall time of the operation and of its COMMIT, and the
WAL it wrote.  Report the load average (printed) next to the numbers: the
machine's disk and cores are shared.
"""
from __future__ import annotations

import argparse
import statistics
import time

import pg_llm_lab

MODELS = {  # name: (n_layer, n_head, n_embd, n_positions, vocab_size)
    "lab": (4, 4, 128, 128, 50257),
    "small": (12, 12, 768, 1024, 50257),
}
TOKENS = [[(i * 7919) % 50257 for i in range(64)]]
TARGETS = [[(i * 7919 + 1) % 50257 for i in range(64)]]


def operations(model: str) -> dict[str, tuple[str, list]]:
    return {
        "write-back (llm_adamw_step)": ("SELECT llm_adamw_step(%s, 1e-4)", [model]),
        "training step (llm_train_step)": ("SELECT llm_train_step(%s, %s, %s, 1e-4)", [model, TOKENS, TARGETS]),
        "llm_checkpoint_save": ("SELECT llm_checkpoint_save(%s)", [model]),
    }


def wal_position(conn) -> int:
    return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def timed(conn, sql: str, params: list, durable: bool) -> tuple[float, float, float]:
    """(operation s, COMMIT s, WAL MB) of one transaction."""
    wal = wal_position(conn)
    conn.execute("BEGIN")
    start = time.perf_counter()
    conn.execute(sql, params)
    done = time.perf_counter()
    if not durable:
        conn.execute("SET LOCAL synchronous_commit = off")
    conn.execute("COMMIT")
    committed = time.perf_counter()
    return done - start, committed - done, (wal_position(conn) - wal) / 2**20


def bench_model(conn, label: str, repeat: int) -> dict:
    model = f"bench_durable_{label}"
    n_layer, n_head, n_embd, n_pos, vocab = MODELS[label]
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [model])
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES (%s, %s, %s, %s, %s, %s)", [model, n_layer, n_head, n_embd, n_pos, vocab])
    conn.execute("SELECT llm_init(%s, 1)", [model])
    conn.execute("SELECT llm_train_step(%s, %s, %s, 1e-4)", [model, TOKENS, TARGETS])  # grad, m, v filled
    print(f"\n{label}: load average {open('/proc/loadavg').read().split()[:3]}")
    results = {}
    for name, (sql, params) in operations(model).items():
        runs = {True: [], False: []}
        for _ in range(repeat):
            for durable in (True, False):
                runs[durable].append(timed(conn, sql, params, durable))
        for durable in (True, False):
            op, commit, wal = (statistics.median(r[i] for r in runs[durable]) for i in range(3))
            results[name, durable] = (op, commit, wal)
            kind = "durable" if durable else "asynchronous"
            print(f"  {name:32s} {kind:12s}  operation {op:7.3f} s   COMMIT {commit:7.3f} s   "
                  f"WAL {wal:6.0f} MB", flush=True)
    conn.execute("DELETE FROM llm_checkpoint WHERE model = %s", [model])
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", [model])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with pg_llm_lab.connect() as conn:
        print("server: synchronous_commit =", conn.execute("SHOW synchronous_commit").fetchone()[0])
        table = {label: bench_model(conn, label, args.repeat) for label in args.models}

    print("\n| operation | model | durable: op s + COMMIT s | asynchronous: op s + COMMIT s | WAL MB |")
    print("| --- | --- | --- | --- | --- |")
    for label, results in table.items():
        for name in operations(label):
            d, a = results[name, True], results[name, False]
            print(f"| {name} | {label} | {d[0]:.3f} + {d[1]:.3f} | {a[0]:.3f} + {a[1]:.3f} | {d[2]:.0f} |")


if __name__ == "__main__":
    main()
