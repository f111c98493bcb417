"""From one learner's llm_share to the first token another learner generates.

    python bench/bench_share.py                       # a GPT-2 small shape (124M parameters)
    python bench/bench_share.py --layers 2 --embd 128 --vocab 512 --positions 128

As a superuser: llm_classroom_init, two learners (bench_alice, bench_bob).
alice registers a model of the shape asked for, initialises it (llm_init)
and shares it; then, `--rounds` times, bob's first call right after the
share (llm_generate_tokens, one token, greedy) is timed from the start of
alice's llm_share, and bob's next call without a share in between.  The
first includes reading the weights through row-level security; the second
shows what a call costs once bob's backend (or the server's shared cache)
has them.  Prints the times and the load average next to them.
"""
from __future__ import annotations

import argparse
import time

from psycopg.conninfo import make_conninfo

import pg_llm_lab

ALICE, BOB, MODEL = "bench_alice", "bench_bob", "bench_alice_gpt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--embd", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--positions", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    url = pg_llm_lab.db.default_url()
    with pg_llm_lab.connect(url) as admin:
        admin.execute("SELECT llm_classroom_init()")
        for role in (ALICE, BOB):
            admin.execute("SELECT llm_classroom_add_learner(%s)", [role])
        admin.execute("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    alice = pg_llm_lab.connect(make_conninfo(url, user=ALICE))
    bob = pg_llm_lab.connect(make_conninfo(url, user=BOB))
    alice.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                  "VALUES (%s, %s, %s, %s, %s, %s)",
                  [MODEL, args.layers, args.heads, args.embd, args.positions, args.vocab])
    started = time.perf_counter()
    alice.execute("SELECT llm_init(%s, 1)", [MODEL])
    params = alice.execute("SELECT sum(pg_column_size(data)) FROM llm_param WHERE model = %s",
                           [MODEL]).fetchone()[0]
    print(f"{MODEL}: {args.layers} layers, n_embd {args.embd}, vocab {args.vocab}: "
          f"{params / 1e6:.0f} MB of weights, llm_init {time.perf_counter() - started:.1f} s")

    generate = "SELECT llm_generate_tokens(%s, ARRAY[1, 2, 3], 1, 0)"
    for round_ in range(1, args.rounds + 1):
        alice.execute("SELECT * FROM llm_share(%s, false)", [MODEL])
        started = time.perf_counter()
        alice.execute("SELECT * FROM llm_share(%s)", [MODEL])
        bob.execute(generate, [MODEL]).fetchone()
        first = time.perf_counter() - started
        started = time.perf_counter()
        bob.execute(generate, [MODEL]).fetchone()
        again = time.perf_counter() - started
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        print(f"round {round_}: share -> bob's first token {first * 1000:8.1f} ms; "
              f"bob's next call {again * 1000:8.1f} ms   (load average {load})")

    alice.execute("DELETE FROM llm_model_config WHERE model = %s", [MODEL])
    alice.close()
    bob.close()


if __name__ == "__main__":
    main()
