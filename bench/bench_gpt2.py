"""GPT-2 small inside PostgreSQL vs PyTorch (HuggingFace), side by side.

    python bench/bench_gpt2.py                  # threads 1 and 2, all sizes
    python bench/bench_gpt2.py --threads 2 --prefill 16 64 --profile

One random GPT-2 small (12 layers, 768 wide, 50257 tokens, 124M parameters)
is loaded into both HF's GPT2LMHeadModel and pg_llm (model `bench_gpt2`),
and both run with the same number of threads:

* prefill: the time to the next-token logits for a prompt of T tokens.
  pg_llm: llm_logits(model, prompt, last_only => true) -- the network over
  the prompt, lm_head on the last row only (what llm_generate_tokens does
  before its first pick; T = 1024 leaves no room for a new token there).
  PyTorch: one forward with logits_to_keep=1 (what HF generate does for
  its first step).  The logits come back over the connection in binary.
* Every number is the best of --repeat runs, pg_llm and PyTorch runs
  interleaved so that both meet the same background load.
* decode: tokens per second while generating 64 tokens after a 16-token
  prompt, greedy, with the KV cache: (time for 1 + 64 tokens - time for 1)
  / 64, for pg_llm's llm_generate_tokens and HF's generate under
  torch.inference_mode().
* memory: the backend's VmRSS sampled every 5 ms while it generates, and
  its VmHWM (peak since the backend started, loading included), read from
  /proc/<pg_backend_pid()>/status, against the weights' size.

With --profile the forward's timers (transformer, lm_head) are printed (pg_llm reports
them at DEBUG1).
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import pg_llm_lab

MODEL = "bench_gpt2"


# ---- setup ---------------------------------------------------------------------

def make_hf(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(bos_token_id=0, eos_token_id=0, pad_token_id=0)  # gpt2-small shape
    return GPT2LMHeadModel(cfg).eval()


def load_into_db(conn, model: GPT2LMHeadModel) -> None:
    c = model.config
    with conn.transaction():
        conn.execute("DELETE FROM llm_model_config WHERE model = %s", (MODEL,))
        conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size)"
                     " VALUES (%s, %s, %s, %s, %s, %s)",
                     (MODEL, c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size))
        with conn.cursor() as cur:
            for name, value in model.state_dict().items():
                name = name.removeprefix("transformer.")
                if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
                    continue
                cur.execute("INSERT INTO llm_param (model, name, data) VALUES (%s, %s, %b)",
                            (MODEL, name, value.numpy()))


# ---- timing helpers ---------------------------------------------------------------

def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_of_pair(repeat: int, fn_a, fn_b) -> tuple[float, float]:
    """Best time of each of two functions over `repeat` runs, interleaved
    (a, b, a, b, ...) so that both meet the same background load."""
    a, b = [], []
    for _ in range(repeat):
        a.append(timed(fn_a))
        b.append(timed(fn_b))
    return min(a), min(b)


def read_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssShmem of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssShmem", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class RssSampler:
    """Samples a process's VmRSS in a background thread."""

    def __init__(self, pid: int, interval: float = 0.005):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, read_status(self.pid)["VmRSS"])
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---- the two engines ---------------------------------------------------------------

def pg_generate(conn, prompt, n_new):
    return conn.execute("SELECT llm_generate_tokens(%s, %s, %s, 0)", (MODEL, prompt, n_new)).fetchone()[0]


def pg_last_logits(conn, prompt):
    # binary=True: a tensor result in the binary format; the text format
    # (psycopg's default) costs ~10 ms more for 50257 floats, in printing
    # and parsing decimals, which is not what we measure here.
    return conn.execute("SELECT llm_logits(%s, %s, true)", (MODEL, prompt), binary=True).fetchone()[0]


def torch_last_logits(model, ids):
    with torch.inference_mode():
        return model(ids, logits_to_keep=1).logits[0, -1].numpy()


def torch_generate(model, ids, n_new):
    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=n_new, min_new_tokens=n_new)


def bench(conn, model, threads, args, rng):
    conn.execute("SELECT set_config('pg_llm.threads', %s, false)", (str(threads),))
    torch.set_num_threads(threads)
    rows = []

    # Warm up both (pg_llm decodes the weights into its cache here).
    warm = rng.integers(0, 50257, 16).tolist()
    pg_generate(conn, warm, 2)
    torch_generate(model, torch.tensor([warm]), 2)

    for T in args.prefill:
        prompt = rng.integers(0, 50257, T).tolist()
        ids = torch.tensor([prompt])
        pg, pt = best_of_pair(args.repeat, lambda: pg_last_logits(conn, prompt),
                              lambda: torch_last_logits(model, ids))
        rows.append((f"prefill T={T} (ms)", pg * 1e3, pt * 1e3, pg / pt, "<= 1.25"))

    n_new = args.decode
    prompt = rng.integers(0, 50257, args.prompt).tolist()
    ids = torch.tensor([prompt])
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    pg_one, pt_one = best_of_pair(args.repeat, lambda: pg_generate(conn, prompt, 1),
                                  lambda: torch_generate(model, ids, 1))
    with RssSampler(pid) as rss:
        pg_all, pt_all = best_of_pair(args.repeat, lambda: pg_generate(conn, prompt, 1 + n_new),
                                      lambda: torch_generate(model, ids, 1 + n_new))
    pg_tps = n_new / (pg_all - pg_one)
    pt_tps = n_new / (pt_all - pt_one)
    rows.append((f"decode {n_new} tok after {args.prompt} (tok/s)", pg_tps, pt_tps, pg_tps / pt_tps, ">= 1.0"))

    weights = 4 * sum(p.numel() for p in model.parameters())
    status = read_status(pid)
    rows.append(("backend VmRSS while generating (MB)", rss.peak / 2**20, weights / 2**20,
                 rss.peak / weights, "<= 1.5 (vs weights)"))
    rows.append(("backend VmHWM, load included (MB)", status["VmHWM"] / 2**20, weights / 2**20,
                 status["VmHWM"] / weights, ""))
    rows.append(("  of which RssShmem (shared buffers) (MB)", status["RssShmem"] / 2**20, float("nan"),
                 float("nan"), ""))
    return rows


def profile(conn, threads, T):
    """Print pg_llm's timers (transformer, lm_head) for a prefill of T tokens and 16 decode steps."""
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute("SELECT set_config('pg_llm.threads', %s, false)", (str(threads),))
    conn.execute("SET client_min_messages = debug1")
    pg_last_logits(conn, list(range(T)))
    pg_generate(conn, list(range(16)), 17)
    conn.execute("RESET client_min_messages")
    for n in notices:
        if "pg_llm gpt2" in n:
            print(f"  [threads={threads}, T={T}] {n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prefill", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--prompt", type=int, default=16, help="prompt length for the decode benchmark")
    ap.add_argument("--decode", type=int, default=64, help="tokens to generate for the decode benchmark")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--no-load", action="store_true", help="reuse the bench_gpt2 weights already in the database")
    ap.add_argument("--profile", action="store_true", help="print pg_llm's timers (transformer, lm_head)")
    args = ap.parse_args()

    model = make_hf()
    if not args.no_load:
        t0 = time.perf_counter()
        with pg_llm_lab.connect(args.url) as conn:
            load_into_db(conn, model)
        print(f"loaded {MODEL} into llm_param in {time.perf_counter() - t0:.1f} s")
    conn = pg_llm_lab.connect(args.url)  # a fresh backend: its VmHWM is the inference's own
    print(f"pg_llm: {conn.execute('SELECT llm_info()').fetchone()[0]}; torch {torch.__version__}; "
          f"load average before: {os.getloadavg()[0]:.2f}")

    for threads in args.threads:
        rng = np.random.default_rng(0)
        rows = bench(conn, model, threads, args, rng)
        print(f"\n== {threads} thread(s); load average {os.getloadavg()[0]:.2f} ==")
        print(f"{'':44s} {'pg_llm':>10s} {'PyTorch':>10s} {'ratio':>7s}  target")
        for name, pg, pt, ratio, target in rows:
            print(f"{name:44s} {pg:10.1f} {pt:10.1f} {ratio:7.2f}  {target}")
        if args.profile:
            for T in args.prefill:
                profile(conn, threads, T)
            print("  (the second line of each pair: a 16-token prompt and 16 decode steps)")
    conn.close()


if __name__ == "__main__":
    main()
