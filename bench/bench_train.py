"""Training GPT-2 inside PostgreSQL vs PyTorch, side by side.

    python bench/bench_train.py                        # both models, threads 1 and 2
    python bench/bench_train.py --models lab --threads 2 --steps 5
    python bench/bench_train.py --models small --threads 2 --steps 3 --no-step   # llm_train only
    python bench/bench_train.py --simd avx2 --tape     # the AVX2 kernels; llm_train recording
    python bench/bench_train.py --bf16 --threads 2 --simd avx2 --repeat 3   # fp32 vs bf16, both sides

Models (random init, float32), batch B=4 sequences of T=64 tokens:
  lab    4 layers, 4 heads, n_embd 128, n_positions 128, vocab 50257
  small  GPT-2 small: 12 layers, 12 heads, n_embd 768, n_positions 1024, vocab 50257

A step is forward + backward + clip_grad_norm_(1.0) + AdamW, for:
  torch           HF GPT2LMHeadModel, the loop of tests/train_reference.py
                  (torch.set_num_threads(threads)), in a subprocess of its
                  own so that its peak memory (VmHWM) is its own
  llm_train_step  one SELECT per step: loads the state from llm_param,
                  steps, writes data, grad, m and v back, logs
  llm_train       CALL llm_train(steps, save_every > steps): the state stays
                  in memory; the steady-state step time is the median gap
                  between consecutive llm_train_log.created_at (one step
                  and its COMMIT of the log rows, no write-back)
  llm_train meta/full   (--tape) the same with pg_llm.autograd_mode meta or
                  full: each step also puts its batch's forward on the tape,
                  built from the activations the step saved (meta: ops and
                  shapes; full also copies every value and recomputes each
                  product before its bias), and the tape's rows are written
                  to llm_tape / llm_tensor_rt; printed with its ratio to the
                  unrecorded llm_train step
--bf16 measures mixed precision instead: llm_train with dtype 'fp32' and
'bf16' beside PyTorch fp32 and under torch.autocast('cpu', dtype=torch.bfloat16),
the four interleaved in each of --repeat rounds (the machine's load drifts);
each cell is the median over the rounds of each round's median step.
--simd sets pg_llm.simd in every pg_llm session (default: the best this CPU has).
Memory is VmHWM (peak resident set) of the process: a fresh backend per
pg_llm measurement, read from /proc/<pg_backend_pid()>/status.
Each time is the median of --steps steps after one warm-up step.  CPU s/step
(all threads; less noisy than wall time on a busy machine): PyTorch's median
step, llm_train's call of steps + 1 steps less a call of one step, per step
(its state load and warm-up cancel out).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import pg_llm_lab

MODELS = {
    "lab": dict(n_layer=4, n_head=4, n_embd=128, n_positions=128, vocab_size=50257),
    "small": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257),
}
B, T = 4, 64
SPLIT = "bench_train"


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (less noisy than wall time on a busy machine)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_model(config: dict):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPT2Config(bos_token_id=0, eos_token_id=0, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0,
                     **config)
    return GPT2LMHeadModel(cfg).eval()


def batches(vocab: int, n: int):
    rng = np.random.default_rng(1)
    for _ in range(n):
        tokens = rng.integers(0, vocab, (B, T))
        yield tokens, np.roll(tokens, -1, axis=1)


def torch_child(label: str, threads: int, steps: int, dtype: str = "fp32") -> None:
    """Runs in a subprocess: prints a JSON line {step_s, hwm_mb}.  dtype bf16: the
    forward and the loss under torch.autocast('cpu', dtype=torch.bfloat16)."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    model = make_model(MODELS[label])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95))
    times, cpu = [], []
    for tokens, targets in batches(MODELS[label]["vocab_size"], steps + 1):
        x, y = torch.as_tensor(tokens), torch.as_tensor(targets)
        start, start_cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(x).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(json.dumps({"step_s": statistics.median(times[1:]), "cpu_step_s": statistics.median(cpu[1:]),
                      "hwm_mb": vm_hwm_mb(os.getpid())}))


def torch_run(label: str, threads: int, steps: int, dtype: str = "fp32") -> dict:
    out = subprocess.run([sys.executable, __file__, "--torch-child", label, str(threads), str(steps), dtype],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def setup(label: str) -> str:
    name = f"bench_train_{label}"
    with pg_llm_lab.connect() as conn:
        conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
        pg_llm_lab.import_hf(conn, make_model(MODELS[label]), name, progress=False)
        conn.execute("DELETE FROM llm_dataset WHERE split = %s", [SPLIT])
        rng = np.random.default_rng(2)
        stream = rng.integers(0, MODELS[label]["vocab_size"], 64 * T + 1)
        conn.execute("SELECT llm_dataset_from_tokens(%s, %s, split => %s)", [stream.tolist(), T, SPLIT])
    return name


SIMD: str | None = None   # --simd


def connect():
    conn = pg_llm_lab.connect()
    if SIMD:
        conn.execute("SELECT set_config('pg_llm.simd', %s, false)", [SIMD])
    return conn


def step_run(name: str, label: str, threads: int, steps: int) -> dict:
    with connect() as conn:
        conn.execute("SELECT set_config('pg_llm.threads', %s, false)", [str(threads)])
        conn.execute("SET client_min_messages = debug1")
        phases = []
        conn.add_notice_handler(lambda d: phases.append(d.message_primary)
                                if (d.message_primary or "").startswith("llm_train_step:") else None)
        pid = conn.info.backend_pid
        times = []
        for tokens, targets in batches(MODELS[label]["vocab_size"], steps + 1):
            start = time.perf_counter()
            conn.execute("SELECT llm_train_step(%s, %s, %s, 6e-4, 0.1, 0.9, 0.95, 1e-8, 1.0)",
                         [name, tokens.tolist(), targets.tolist()])
            times.append(time.perf_counter() - start)
        return {"step_s": statistics.median(times[1:]), "hwm_mb": vm_hwm_mb(pid),
                "phases": phases[-1] if phases else ""}


def loop_run(name: str, threads: int, steps: int, tape: str = "off", dtype: str = "fp32") -> dict:
    with connect() as conn:
        conn.execute("SELECT llm_autograd_mode(%s)", [tape])
        pid = conn.info.backend_pid

        def call(n: int) -> tuple[float, float]:
            """CALL llm_train for n steps: its wall and CPU seconds."""
            start, cpu = time.perf_counter(), cpu_seconds(pid)
            conn.execute("CALL llm_train(%s, %s, batch_size => %s, grad_workers => %s, optimizer_workers => %s, "
                         "save_every => %s, split => %s, notice_every => 0, dtype => %s)",
                         [name, n, B, threads, threads, n + 10, SPLIT, dtype])
            return time.perf_counter() - start, cpu_seconds(pid) - cpu

        # a one-step call first: the CPU time of a step is what the longer call costs more
        # (the state load and the first step's page faults cancel out)
        _, cpu_one = call(1)
        first = conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
        total, cpu = call(steps + 1)
        stamps = [r[0] for r in conn.execute(
            "SELECT extract(epoch FROM created_at) FROM llm_train_log WHERE model = %s AND id > %s ORDER BY id",
            [name, first]).fetchall()]
        gaps = np.diff(np.array(stamps, dtype=np.float64))
        hwm = vm_hwm_mb(pid)
        conn.execute("SELECT llm_autograd_mode('off'), llm_prune_autograd_state()")
        return {"step_s": float(np.median(gaps)), "call_s": total, "hwm_mb": hwm,
                "cpu_step_s": (cpu - cpu_one) / steps}


def bf16_table(args) -> None:
    """--bf16: llm_train fp32 / bf16 and PyTorch fp32 / autocast bf16, interleaved."""
    variants = {"PyTorch fp32": lambda name, label, threads: torch_run(label, threads, args.steps),
                "PyTorch autocast bf16": lambda name, label, threads: torch_run(label, threads, args.steps, "bf16"),
                "llm_train fp32": lambda name, label, threads: loop_run(name, threads, args.steps),
                "llm_train bf16": lambda name, label, threads: loop_run(name, threads, args.steps, dtype="bf16")}
    rows = []
    for label in args.models:
        name = setup(label)
        for threads in args.threads:
            got = {v: [] for v in variants}
            cpu = {v: [] for v in variants if v.startswith("llm_train")}
            for r in range(args.repeat):
                for v, run in variants.items():
                    # (--torch-rounds: PyTorch in the first rounds only; autocast is slow without bf16 hardware)
                    if v.startswith("PyTorch") and r >= args.torch_rounds:
                        continue
                    result = run(name, label, threads)
                    got[v].append(result["step_s"])
                    if v in cpu:
                        cpu[v].append(result["cpu_step_s"])
                print(f"{label} threads={threads} round {r + 1}: "
                      + ", ".join(f"{v} {got[v][-1]:.3f} s" for v in variants if len(got[v]) > r), flush=True)
            rows.append((label, threads, {v: statistics.median(t) if t else float("nan") for v, t in got.items()},
                         {v: statistics.median(t) for v, t in cpu.items()}))
        with pg_llm_lab.connect() as conn:
            conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    with pg_llm_lab.connect() as conn:
        conn.execute("DELETE FROM llm_dataset WHERE split = %s", [SPLIT])
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"\npg_llm.simd = {SIMD or 'best'}; B={B}, T={T}; s/step, median of {args.repeat} rounds "
          f"({min(args.repeat, args.torch_rounds)} for PyTorch) of {args.steps} steps; "
          f"load average {' '.join(load)}\n")
    head = ["model", "threads", *variants, "pg bf16 / fp32", "torch bf16 / fp32", "pg / torch fp32",
            "pg / torch bf16", "llm_train CPU s/step fp32, bf16"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for label, threads, m, c in rows:
        pt32, pt16, pg32, pg16 = (m[v] for v in variants)
        cells = [label, threads, *(f"{m[v]:.3f}" for v in variants), f"{pg16 / pg32:.2f}x", f"{pt16 / pt32:.2f}x",
                 f"{pg32 / pt32:.2f}x", f"{pg16 / pt16:.2f}x",
                 f"{c['llm_train fp32']:.3f}, {c['llm_train bf16']:.3f} ({c['llm_train bf16'] / c['llm_train fp32']:.2f}x)"]
        print("| " + " | ".join(map(str, cells)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--simd", choices=["scalar", "avx2", "avx512", "neon"],
                        help="pg_llm.simd for the pg_llm runs (default: the best this CPU has)")
    parser.add_argument("--tape", action="store_true", help="also llm_train with the tape in meta and full")
    parser.add_argument("--no-step", action="store_true",
                        help="skip llm_train_step (its write-back of gpt2-small takes ~25 s a step)")
    parser.add_argument("--bf16", action="store_true",
                        help="fp32 vs bf16 mixed precision: llm_train's dtype, torch.autocast")
    parser.add_argument("--repeat", type=int, default=3, help="--bf16: interleaved rounds")
    parser.add_argument("--torch-rounds", type=int, default=1_000_000,
                        help="--bf16: PyTorch runs in the first rounds only (default: all)")
    parser.add_argument("--torch-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child:
        label, threads, steps, dtype = args.torch_child
        torch_child(label, int(threads), int(steps), dtype)
        return

    global SIMD
    SIMD = args.simd
    if args.bf16:
        bf16_table(args)
        return
    with connect() as conn:
        isa = conn.execute("SELECT llm_info()->>'simd'").fetchone()[0]
    rows = []
    for label in args.models:
        name = setup(label)
        for threads in args.threads:
            t = torch_run(label, threads, args.steps)
            s = ({"step_s": float("nan"), "hwm_mb": float("nan"), "phases": "llm_train_step: skipped"}
                 if args.no_step else step_run(name, label, threads, args.steps))
            loop = loop_run(name, threads, args.steps)
            tapes = {m: loop_run(name, threads, args.steps, m) for m in (("meta", "full") if args.tape else ())}
            rows.append((label, threads, t, s, loop, tapes))
            print(f"{label} threads={threads}: torch {t['step_s']:.3f} s ({t['hwm_mb']:.0f} MB), "
                  f"llm_train_step {s['step_s']:.3f} s ({s['hwm_mb']:.0f} MB), "
                  f"llm_train {loop['step_s']:.3f} s/step ({loop['hwm_mb']:.0f} MB)\n    {s['phases']}",
                  flush=True)
            for mode, run in tapes.items():
                print(f"    llm_train, tape {mode}: {run['step_s']:.3f} s/step ({run['hwm_mb']:.0f} MB), "
                      f"{run['step_s'] / loop['step_s']:.2f}x the unrecorded step", flush=True)
        with pg_llm_lab.connect() as conn:
            conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])
    with pg_llm_lab.connect() as conn:
        conn.execute("DELETE FROM llm_dataset WHERE split = %s", [SPLIT])

    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\npg_llm.simd = {isa}; B={B}, T={T}, float32; median of {args.steps} steps; memory = VmHWM; "
          f"load average {load}\n")
    tape_cols = [f"llm_train, tape {m} s/step" for m in (("meta", "full") if args.tape else ())]
    head = ["model", "threads", "PyTorch s/step", "llm_train_step s", "llm_train s/step",
            "llm_train / PyTorch", "PyTorch CPU s/step", "llm_train CPU s/step", "CPU llm_train / PyTorch",
            *tape_cols, "PyTorch MB", "llm_train_step MB", "llm_train MB"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for label, threads, t, s, loop, tapes in rows:
        cells = [label, threads, f"{t['step_s']:.3f}", f"{s['step_s']:.3f}", f"{loop['step_s']:.3f}",
                 f"{loop['step_s'] / t['step_s']:.2f}x", f"{t['cpu_step_s']:.3f}", f"{loop['cpu_step_s']:.3f}",
                 f"{loop['cpu_step_s'] / t['cpu_step_s']:.2f}x", *(f"{r['step_s']:.3f}" for r in tapes.values()),
                 f"{t['hwm_mb']:.0f}", f"{s['hwm_mb']:.0f}", f"{loop['hwm_mb']:.0f}"]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
