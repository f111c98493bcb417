"""bf16 weights for inference (pg_llm.inference_dtype) vs fp32, with PyTorch beside them.

    python bench/bench_bf16.py                        # loads the random GPT-2 small first
    python bench/bench_bf16.py --no-load --repeat 7   # reuse bench_gpt2's weights

One random GPT-2 small (bench_gpt2.py's model `bench_gpt2`) in pg_llm, and
the same weights in HF's GPT2LMHeadModel; every engine runs with --threads
threads.  The variants:

* pg_llm fp32 and bf16 (SET pg_llm.inference_dtype), at each --simd
  (avx2, auto: the same on a CPU without AVX-512, then auto is skipped);
* PyTorch fp32, and with --torch-bf16 PyTorch bf16 (model.to(torch.bfloat16):
  bf16 activations too, so not the same arithmetic; on a CPU without
  AVX512_BF16 it is very slow: 10x PyTorch fp32's prefill, measured here).

Measured, per repeat, every variant in turn (interleaved, so that all meet
the same background load), reported as the median over --repeat:

* decode: tokens per second generating --decode tokens after a --prompt
  token prompt, greedy, with the KV cache: --decode / (time for 1 + decode
  tokens - time for 1 token);
* prefill: the time to the last row's logits for a prompt of T tokens
  (llm_logits(..., last_only => true); PyTorch: logits_to_keep=1).

Beside each pg_llm prefill time, its CPU time (all threads of the server
backend, from /proc/<pid>/task/*/schedstat, when the server runs on this
machine): wall clock on a shared machine depends on the load, CPU time
much less (it still includes time waiting for memory and the worker
threads' spinning).

Goals (issue 18): pg_llm bf16 decode >= 1.6x pg_llm fp32 decode; prefill >= 1.3x
where AVX512_BF16 exists.  The cached weights' bytes (llm_model_cache()) are
printed for both dtypes.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import numpy as np
import torch

import pg_llm_lab
from bench_gpt2 import MODEL, load_into_db, make_hf


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time of all threads of process pid so far (Linux), or None (no pid)."""
    if pid is None:
        return None
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    ns = 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                ns += int(f.read().split()[0])
        except OSError:  # a thread that just ended
            continue
    return ns / 1e9


def timed_cpu(fn, pid: int | None) -> tuple[float, float | None]:
    """(wall seconds, CPU seconds of process pid, or None) of fn()."""
    c0 = cpu_seconds(pid)
    wall = timed(fn)
    c1 = cpu_seconds(pid)
    return wall, (c1 - c0 if c0 is not None and c1 is not None else None)


class PgVariant:
    def __init__(self, conn, simd, dtype):
        self.conn, self.simd, self.dtype = conn, simd, dtype
        self.name = f"pg_llm {dtype} simd={simd}"
        self.pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def setup(self):
        self.conn.execute("SELECT set_config('pg_llm.simd', %s, false),"
                          " set_config('pg_llm.inference_dtype', %s, false)", (self.simd, self.dtype))

    def generate(self, prompt, n):
        self.conn.execute("SELECT llm_generate_tokens(%s, %s, %s, 0)", (MODEL, prompt, n)).fetchone()

    def last_logits(self, prompt):
        self.conn.execute("SELECT llm_logits(%s, %s, true)", (MODEL, prompt), binary=True).fetchone()


class TorchVariant:
    def __init__(self, model, dtype):
        self.model, self.dtype = model, dtype
        self.name = f"PyTorch {dtype}"
        self.pid = None

    def setup(self):
        pass

    def generate(self, prompt, n):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=n, min_new_tokens=n)

    def last_logits(self, prompt):
        with torch.inference_mode():
            self.model(torch.tensor([prompt]), logits_to_keep=1)


def resolved_simd(conn, simd):
    conn.execute("SELECT set_config('pg_llm.simd', %s, false)", (simd,))
    return conn.execute("SELECT llm_info()::json->>'simd'").fetchone()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--simd", nargs="+", default=["avx2", "auto"])
    ap.add_argument("--prefill", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--prompt", type=int, default=16, help="prompt length for decode")
    ap.add_argument("--decode", type=int, default=64, help="tokens generated for decode")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--torch-bf16", action="store_true", help="also PyTorch with bf16 weights and activations")
    ap.add_argument("--no-load", action="store_true", help="reuse the bench_gpt2 weights already in the database")
    ap.add_argument("--url", default=os.environ.get("DATABASE_URL"))
    args = ap.parse_args()

    model = make_hf()
    if not args.no_load:
        with pg_llm_lab.connect(args.url) as conn:
            load_into_db(conn, model)
    conn = pg_llm_lab.connect(args.url)
    conn.execute("SELECT set_config('pg_llm.threads', %s, false)", (str(args.threads),))
    torch.set_num_threads(args.threads)

    variants, seen = [], set()
    for simd in args.simd:
        isa = resolved_simd(conn, simd)
        if isa in seen:
            print(f"simd={simd} is {isa} on this CPU, already measured: skipped")
            continue
        seen.add(isa)
        variants += [PgVariant(conn, simd, "fp32"), PgVariant(conn, simd, "bf16")]
    variants.append(TorchVariant(model, "fp32"))
    if args.torch_bf16:
        variants.append(TorchVariant(copy.deepcopy(model).to(torch.bfloat16), "bf16"))

    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 50257, args.prompt).tolist()
    prompts = {T: rng.integers(0, 50257, T).tolist() for T in args.prefill}
    for v in variants:  # warm up: pg_llm decodes (and caches) the weights of each dtype
        v.setup()
        v.generate(prompt, 2)

    decode = {v.name: [] for v in variants}
    prefill = {(v.name, T): [] for v in variants for T in args.prefill}
    prefill_cpu = {(v.name, T): [] for v in variants for T in args.prefill}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeat):
        for v in variants:
            v.setup()
            one = timed(lambda: v.generate(prompt, 1))
            full = timed(lambda: v.generate(prompt, 1 + args.decode))
            decode[v.name].append(args.decode / (full - one))
            for T in args.prefill:
                wall, cpu = timed_cpu(lambda: v.last_logits(prompts[T]), v.pid)
                prefill[(v.name, T)].append(wall)
                if cpu is not None:
                    prefill_cpu[(v.name, T)].append(cpu)
        load.append(os.getloadavg()[0])

    info = conn.execute("SELECT llm_info()").fetchone()[0]
    print(f"\n{info}; torch {torch.__version__}; threads {args.threads}; "
          f"repeat {args.repeat} (medians); load average {min(load):.2f}..{max(load):.2f}")
    base = {}
    header = f"{'variant':28s} {'decode tok/s':>12s} {'x fp32':>7s}" + \
        "".join(f" {'prefill T=' + str(T) + ' ms':>17s} {'x fp32':>7s}" for T in args.prefill)
    print(header)
    for v in variants:
        key = v.name.replace("bf16", "fp32")
        d = statistics.median(decode[v.name])
        p = [statistics.median(prefill[(v.name, T)]) * 1e3 for T in args.prefill]
        base.setdefault(key, (d, p))
        bd, bp = base[key]
        line = f"{v.name:28s} {d:12.1f} {d / bd:7.2f}"
        for T, ms, bms in zip(args.prefill, p, bp):
            line += f" {ms:17.1f} {bms / ms:7.2f}"
        print(line)
    if any(prefill_cpu.values()):
        print("\nprefill CPU time of the server backend (all its threads), median ms:")
        cpu_base = {}
        for v in variants:
            if not prefill_cpu[(v.name, args.prefill[0])]:
                continue
            key = v.name.replace("bf16", "fp32")
            p = [statistics.median(prefill_cpu[(v.name, T)]) * 1e3 for T in args.prefill]
            cpu_base.setdefault(key, p)
            print(f"{v.name:28s}" + "".join(f"   T={T} {ms:7.1f} ms {b / ms:5.2f}x"
                                           for T, ms, b in zip(args.prefill, p, cpu_base[key])))
    print("\nllm_model_cache():")
    for row in conn.execute("SELECT dtype, version, round(bytes / 1048576.0, 1) FROM llm_model_cache()"
                            " WHERE model = %s ORDER BY dtype", (MODEL,)).fetchall():
        print(f"  {row[0]}  version {row[1]}  {row[2]} MB")
    conn.close()


if __name__ == "__main__":
    main()
