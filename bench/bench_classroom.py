"""A classroom on one server: many sessions generating at once from one GPT-2 small.

    python bench/bench_classroom.py                           # 10 and 30 sessions, pg_llm.simd auto and avx2
    python bench/bench_classroom.py --sessions 10 --simd avx2 --tokens 4

One GPT-2 small-shaped model (12 layers, 768 wide, 50257 tokens, 1024
positions: 124M parameters, 498 MB of float32), weights from llm_init (no
download), model `bench_class`.  The server must run on this machine (its
processes' /proc is read).  For each ISA and each session count N:

* (the weights are decoded once before, and timed;)
* N connections, pg_llm.threads = 1 each (a classroom has more learners than
  cores), start `SELECT llm_generate_tokens(model, prompt, K, ...)` together
  (a prompt of --prompt tokens, K = --tokens, a seed per session);
* memory: the sum over the N backends of Pss in /proc/PID/smaps_rollup (a
  shared page counts 1/n in each of the n processes mapping it, so the sum
  is the memory the class really uses), sampled while they generate (peak)
  and once all have finished;
* throughput: N * K tokens over the wall time from the start to the last end.

Goal (issue 16): summed Pss <= 1.3 * 498 MB + 80 MB * N -- the weights
once, plus per-sequence state.  (Before the shared cache: 501 MB per
session, 4.0 GB at 8.)

Then the time from a commit of new weights in one session to the first token
another session generates from them (what a learner sees right after an
instructor shares or retrains a model): that call decodes the new version
once for everyone; the same call again is the warm time.

Report /proc/loadavg with the numbers: on a shared machine they move.
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import pg_llm_lab

MODEL = "bench_class"
SMALL = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
WEIGHTS_MB = 498


def ensure_model(conn) -> None:
    have = conn.execute("SELECT count(*) FROM llm_param WHERE model = %s", (MODEL,)).fetchone()[0]
    if have == 4 + 12 * SMALL["n_layer"]:
        return
    print(f"creating {MODEL} (GPT-2 small's shape, llm_init) ...", flush=True)
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", (MODEL,))
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                 " VALUES (%(m)s, %(n_layer)s, %(n_head)s, %(n_embd)s, %(n_positions)s, %(vocab_size)s)",
                 dict(m=MODEL, **SMALL))
    conn.execute("SELECT llm_init(%s, 1)", (MODEL,))


def pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line for process {pid}")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def best_isa() -> str:
    """The best ISA pg_llm.simd = auto picks on this CPU."""
    with open("/proc/cpuinfo") as f:
        flags = next((line.split() for line in f if line.startswith("flags")), [])
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "scalar"


def classroom(url: str, n: int, simd: str, prompt: list[int], tokens: int) -> dict:
    sessions = [pg_llm_lab.connect(url) for _ in range(n)]
    try:
        for s in sessions:
            s.execute(f"SET pg_llm.simd = {simd}")
            s.execute("SET pg_llm.threads = 1")
        pids = [s.info.backend_pid for s in sessions]
        start = threading.Barrier(n + 1)
        errors = []

        def learner(i):
            start.wait()
            try:
                sessions[i].execute("SELECT llm_generate_tokens(%s, %s, %s, 0.9, seed => %s)",
                                    (MODEL, prompt, tokens, i))
            except Exception as err:  # noqa: BLE001 -- reported below
                errors.append(err)

        threads = [threading.Thread(target=learner, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        peak = 0.0
        while any(t.is_alive() for t in threads):
            peak = max(peak, sum(pss_mb(p) for p in pids))
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        if errors:
            raise errors[0]
        after = sum(pss_mb(p) for p in pids)
        decoded = sessions[0].execute("SELECT count(*) FROM llm_model_cache() WHERE model = %s",
                                      (MODEL,)).fetchone()[0]
        return dict(sessions=n, simd=simd, peak_mb=max(peak, after), after_mb=after,
                    goal_mb=1.3 * WEIGHTS_MB + 80 * n, tokens_per_s=n * tokens / wall, wall_s=wall,
                    cached_versions=decoded)
    finally:
        for s in sessions:
            s.close()


def commit_to_first_token(url: str, prompt: list[int]) -> tuple[float, float]:
    """(s from a commit of new weights to another session's first token, s for the same call warm)."""
    with pg_llm_lab.connect(url) as teacher, pg_llm_lab.connect(url) as learner:
        learner.execute("SET pg_llm.threads = 1")
        first = "SELECT llm_generate_tokens(%s, %s, 1, 0)"
        learner.execute(first, (MODEL, prompt))            # the old version, cached
        teacher.execute("UPDATE llm_param SET data = llm_fill(ARRAY[768], random()::real)"
                        " WHERE model = %s AND name = 'ln_f.bias'", (MODEL,))   # committed here
        t0 = time.perf_counter()
        learner.execute(first, (MODEL, prompt))
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        learner.execute(first, (MODEL, prompt))
        return cold, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--simd", nargs="+", default=["auto", "avx2"])
    ap.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    ap.add_argument("--tokens", type=int, default=4, help="new tokens per session")
    args = ap.parse_args()

    url = pg_llm_lab.db.default_url()
    with pg_llm_lab.connect(url) as conn:
        ensure_model(conn)
        conn.execute("SELECT llm_model_cache_clear()")
        server = conn.execute("SHOW server_version").fetchone()[0]
        cap = conn.execute("SHOW pg_llm.shared_cache_size").fetchone()[0]
    prompt = [(17 * i + 5) % SMALL["vocab_size"] for i in range(args.prompt)]
    print(f"PostgreSQL {server}, pg_llm.shared_cache_size {cap}, {os.cpu_count()} cores "
          f"(simd auto = {best_isa()} here); "
          f"prompt {args.prompt} tokens, {args.tokens} new per session; loadavg {loadavg()}")
    with pg_llm_lab.connect(url) as conn:
        t0 = time.perf_counter()
        conn.execute("SELECT llm_generate_tokens(%s, %s, 1, 0)", (MODEL, prompt))
        print(f"decoding the weights once, and a first token: {time.perf_counter() - t0:.2f} s")
    print(f"{'simd':>6} {'sessions':>8} {'peak Pss MB':>12} {'after MB':>9} {'goal MB':>8} "
          f"{'tokens/s':>9} {'wall s':>7} {'versions':>8}")
    for simd in args.simd:
        for n in args.sessions:
            r = classroom(url, n, simd, prompt, args.tokens)
            ok = "ok" if r["peak_mb"] <= r["goal_mb"] else "OVER"
            print(f"{simd:>6} {n:>8} {r['peak_mb']:>12.0f} {r['after_mb']:>9.0f} {r['goal_mb']:>8.0f} "
                  f"{r['tokens_per_s']:>9.2f} {r['wall_s']:>7.1f} {r['cached_versions']:>8} {ok}  "
                  f"(loadavg {loadavg()})", flush=True)
    cold, warm = commit_to_first_token(url, prompt)
    print(f"commit of new weights -> another session's first token: {cold:.2f} s "
          f"(the same call warm: {warm:.2f} s); loadavg {loadavg()}")


if __name__ == "__main__":
    main()
