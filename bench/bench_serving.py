"""Serving a class: N sessions streaming tokens at once from one GPT-2 small,
with decode batching (pg_llm.decode_batching) off and on.

    python bench/bench_serving.py                        # 1, 8, 30 sessions, avx2, 48 tokens
    python bench/bench_serving.py --sessions 8 --simd avx2 auto --threads 1 2

One GPT-2 small-shaped model (124M parameters, weights from llm_init, model
`bench_class`, shared with bench_classroom.py).  For each N, each thread
count, off and on (interleaved, --rounds times, medians):

* N connections (pg_llm.threads, pg_llm.simd as asked) each stream
  llm_generate_stream_tokens(model, prompt, K) through a cursor, FETCH 1 a
  token, all released together;
* total tokens/s = N*K over the wall time; tokens/s per learner (the median
  learner's K over its own time); time to first token (median over
  learners: the prefill and first step, waiting for the others included);
  p95 step latency (over every FETCH after the first, all learners);
* memory: the sum of Pss (/proc/PID/smaps_rollup) over the N backends at
  the end (the server must run on this machine);
* CPU ms per token: the CPU time of the N backends (/proc/PID/stat) over
  the N*K tokens -- what the work costs, whatever share of a loaded
  machine the scheduler gave it (on a shared machine, one process serving
  a batch gets one process's share, where N processes decoding alone get
  N shares: total tok/s then says more about the load than the code).

With --long-prompt P, one more session (pg_llm.threads as the others)
starts, once the N stream, a generation from a prompt of P tokens (its
prefill runs in its own backend, outside any batch): the p95 and the
longest of the others' steps that overlapped that prefill are printed
beside the p95 of the steps that did not, to see whether a long prompt stalls a batch.

PyTorch beside it: HF's GPT2LMHeadModel of the same shape (random init)
generating K tokens for a batch of N (greedy, KV cache, torch threads =
the machine's cores), the serving engine's ideal of one pass per step.

Report /proc/loadavg: the machine is shared.
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import pg_llm_lab
from bench_classroom import MODEL, SMALL, ensure_model, loadavg, pss_mb


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[-1] if len(xs) > 1 else xs[0]


def serve(url: str, n: int, simd: str, threads: int, batching: bool, prompt: list[int],
          tokens: int, long_prompt: int = 0) -> dict:
    sessions = [pg_llm_lab.connect(url, autocommit=False) for _ in range(n + (long_prompt > 0))]
    try:
        for s in sessions:
            s.execute(f"SET pg_llm.simd = {simd}")
            s.execute(f"SET pg_llm.threads = {threads}")
            s.execute(f"SET pg_llm.decode_batching = {'on' if batching else 'off'}")
            s.execute("SELECT llm_generate_tokens(%s, ARRAY[1], 1)", (MODEL,))   # weights mapped
            s.commit()
        pids = [s.info.backend_pid for s in sessions[:n]]
        cpu0 = sum(cpu_seconds(p) for p in pids)
        start = threading.Barrier(n + 1)
        ttft, steps, own, errors = [0.0] * n, [], [0.0] * n, []
        spans = []     # (start, end) of each step after the first, all learners
        prefill = []   # (start, end) of the long prompt's generation

        def learner(i):
            s = sessions[i]
            start.wait()
            try:
                t0 = time.perf_counter()
                s.execute("DECLARE gen NO SCROLL CURSOR FOR SELECT (r).* FROM (SELECT "
                          "llm_generate_stream_tokens(%s, %s, %s, 0.9, seed => %s) AS r) AS s",
                          (MODEL, prompt, tokens, i))
                s.execute("FETCH 1 FROM gen").fetchone()
                ttft[i] = time.perf_counter() - t0
                for _ in range(tokens - 1):
                    t1 = time.perf_counter()
                    s.execute("FETCH 1 FROM gen").fetchone()
                    t2 = time.perf_counter()
                    steps.append(t2 - t1)
                    spans.append((t1, t2))
                s.commit()
                own[i] = time.perf_counter() - t0
            except Exception as err:  # noqa: BLE001 -- reported below
                errors.append(err)

        def interloper():
            """A long prompt arriving mid-batch: its prefill, then one token."""
            s = sessions[n]
            time.sleep(0.3)                 # the others are streaming by now
            long = [(31 * i + 7) % SMALL["vocab_size"] for i in range(long_prompt)]
            t1 = time.perf_counter()
            s.execute("SELECT llm_generate_tokens(%s, %s, 1)", (MODEL, long))
            prefill.append((t1, time.perf_counter()))
            s.commit()

        workers = [threading.Thread(target=learner, args=(i,)) for i in range(n)]
        if long_prompt:
            workers.append(threading.Thread(target=interloper))
        for t in workers:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in workers:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise errors[0]
        memory = sum(pss_mb(p) for p in pids)
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        out = dict(total=n * tokens / wall, per_learner=statistics.median(tokens / o for o in own),
                   ttft=statistics.median(ttft), p95=p95(steps), memory=memory,
                   cpu_ms=1000 * cpu / (n * tokens))
        if long_prompt:
            a, b = prefill[0]
            during = [e - s for s, e in spans if s < b and e > a] or [0.0]
            outside = [e - s for s, e in spans if not (s < b and e > a)] or [0.0]
            out.update(prefill_s=b - a, p95_during=p95(during), max_during=max(during),
                       p95_outside=p95(outside))
        return out
    finally:
        for s in sessions:
            s.close()


def torch_batch(n: int, prompt: list[int], tokens: int) -> float:
    """tokens/s of HF generate for a batch of n (greedy, KV cache), or 0 without torch."""
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return 0.0
    torch.set_num_threads(os.cpu_count() or 1)
    model = GPT2LMHeadModel(GPT2Config(**SMALL)).eval()
    ids = torch.tensor([prompt] * n)
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                       do_sample=False, pad_token_id=0)                   # warm-up
        t0 = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                       min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        return n * tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 30])
    ap.add_argument("--simd", nargs="+", default=["avx2"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per session")
    ap.add_argument("--rounds", type=int, default=1, help="repeats of each case (medians)")
    ap.add_argument("--long-prompt", type=int, default=0,
                    help="one more session prefills a prompt of this many tokens mid-batch")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()

    url = pg_llm_lab.db.default_url()
    with pg_llm_lab.connect(url) as conn:
        ensure_model(conn)
        server = conn.execute("SHOW server_version").fetchone()[0]
    prompt = [(17 * i + 5) % SMALL["vocab_size"] for i in range(args.prompt)]
    print(f"PostgreSQL {server}, {os.cpu_count()} cores; prompt {args.prompt} tokens, "
          f"{args.tokens} new per session; loadavg {loadavg()}")
    print(f"{'simd':>6} {'thr':>3} {'N':>3} {'batching':>8} {'total tok/s':>11} {'tok/s each':>10} "
          f"{'TTFT s':>7} {'p95 step ms':>11} {'Pss MB':>7} {'CPU ms/tok':>10} {'torch tok/s':>11} "
          f"{'pg/torch':>8}")
    for simd in args.simd:
        for threads in args.threads:
            for n in args.sessions:
                runs = {False: [], True: []}
                for _ in range(args.rounds):
                    for batching in (False, True):      # interleaved
                        runs[batching].append(serve(url, n, simd, threads, batching, prompt,
                                                    args.tokens, args.long_prompt))
                ref = 0.0 if args.no_torch else torch_batch(n, prompt, args.tokens)
                for batching in (False, True):
                    med = {k: statistics.median(r[k] for r in runs[batching]) for k in runs[batching][0]}
                    ratio = f"{med['total'] / ref:8.2f}" if ref else f"{'-':>8}"
                    print(f"{simd:>6} {threads:>3} {n:>3} {'on' if batching else 'off':>8} "
                          f"{med['total']:>11.1f} {med['per_learner']:>10.2f} {med['ttft']:>7.2f} "
                          f"{med['p95'] * 1000:>11.0f} {med['memory']:>7.0f} {med['cpu_ms']:>10.1f} "
                          f"{ref:>11.1f} {ratio}  (loadavg {loadavg()})", flush=True)
                    if args.long_prompt:
                        print(f"{'':>24} prefill of {args.long_prompt} tokens: {med['prefill_s']:.2f} s;"
                              f" the others' steps meanwhile: p95 {med['p95_during'] * 1000:.0f} ms,"
                              f" longest {med['max_during'] * 1000:.0f} ms (p95 of the other steps"
                              f" {med['p95_outside'] * 1000:.0f} ms)", flush=True)


if __name__ == "__main__":
    main()
