"""The loss curve of bf16 mixed precision against fp32: the demo's model and data,
trained twice from the same initialisation with the same batches, once with
CALL llm_train(..., dtype => 'fp32') and once with dtype => 'bf16'.

    python bench/bench_train_bf16_curve.py                 # 300 steps, pg_llm.threads
    python bench/bench_train_bf16_curve.py --steps 300 --threads 2 --simd avx2

The demo (pg_llm_lab/demo.py, its DEFAULT settings but the step count): the
standard library's docstrings and pg_description, a BPE tokenizer learnt from
them, blocks of 64 tokens, a 4-layer 4-head width-128 GPT-2, batch 12,
lr 2e-3 with warmup and a cosine to lr/10.  Reported: the training loss at
steps 1, 50, 100, ... (mean of the 10 steps up to there: one batch is noisy),
the final training loss (mean of the last 20 steps) and the validation loss
after (llm_eval), with bf16's relative difference from fp32.  The goal of
issue 18: the final losses within 1%.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

import pg_llm_lab
from pg_llm_lab import demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, help="pg_llm.threads (default: the server's)")
    parser.add_argument("--simd", choices=["scalar", "avx2", "avx512"])
    args = parser.parse_args()

    settings = dataclasses.replace(demo.DEFAULT, model="bf16curve", minutes=None, steps=args.steps,
                                   val_rows=200)
    with pg_llm_lab.connect() as conn:
        if args.threads:
            conn.execute("SELECT set_config('pg_llm.threads', %s, false)", [str(args.threads)])
        if args.simd:
            conn.execute("SELECT set_config('pg_llm.simd', %s, false)", [args.simd])
        text, source = demo.build_corpus(conn, settings)
        parts = demo.split_text(text, settings.val_fraction)
        settings = dataclasses.replace(settings, vocab=demo.train_tokenizer(conn, settings, parts[0]))
        n_tokens, train_rows, val_rows = demo.make_dataset(conn, settings, parts)
        train_split, val_split = demo._splits(settings)
        print(f"{source}; {n_tokens:,} tokens, {train_rows} train rows of {settings.block}, vocab {settings.vocab}")

        curves, val, seconds = {}, {}, {}
        for dtype in ("fp32", "bf16"):
            model = f"{settings.model}-{dtype}"
            demo.register_model(conn, dataclasses.replace(settings, model=model))   # llm_init(seed): the same start
            since = conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
            tick = time.monotonic()
            conn.execute("CALL llm_train(%s, %s, batch_size => %s, lr => %s, warmup => %s, min_lr => %s, "
                         "weight_decay => 0.1, clip => 1.0, seed => %s, split => %s, "
                         "notice_every => 0, save_every => %s, dtype => %s)",
                         [model, settings.steps, settings.batch, settings.lr, settings.warmup, settings.lr / 10,
                          settings.seed, train_split, settings.steps, dtype])
            seconds[dtype] = time.monotonic() - tick
            curves[dtype] = np.array([r[0] for r in conn.execute(
                "SELECT loss FROM llm_train_log WHERE model = %s AND id > %s ORDER BY id", [model, since])])
            val[dtype] = conn.execute("SELECT loss FROM llm_eval(%s::text, %s::text, %s::int)",
                                      [model, val_split, settings.val_rows]).fetchone()[0]
            print(f"{dtype}: {settings.steps} steps in {seconds[dtype]:.0f} s", flush=True)
        for dtype in ("fp32", "bf16"):
            conn.execute("DELETE FROM llm_model_config WHERE model = %s", [f"{settings.model}-{dtype}"])
        conn.execute("DELETE FROM llm_dataset WHERE split = ANY(%s)", [[train_split, val_split]])
        simd = conn.execute("SELECT llm_info()->>'simd'").fetchone()[0]

    def final(c):
        return float(c[-20:].mean())

    print(f"\nthe demo's model, {settings.steps} steps, batch {settings.batch} x {settings.block}, "
          f"pg_llm.simd = {simd}\n")
    marks = [1] + list(range(50, settings.steps + 1, 50))
    print("| step | " + " | ".join(f"{m}" for m in marks) + " |")
    print("|" + " --- |" * (len(marks) + 1))
    for dtype, c in curves.items():
        print(f"| {dtype} | " + " | ".join(f"{c[max(0, m - 10):m].mean():.3f}" for m in marks) + " |")
    print()
    print("| | fp32 | bf16 | bf16 vs fp32 |")
    print("| --- | --- | --- | --- |")
    f32, f16 = final(curves["fp32"]), final(curves["bf16"])
    print(f"| final training loss (mean of the last 20 steps) | {f32:.4f} | {f16:.4f} | {(f16 - f32) / f32:+.2%} |")
    print(f"| last step's loss | {curves['fp32'][-1]:.4f} | {curves['bf16'][-1]:.4f} | "
          f"{(curves['bf16'][-1] - curves['fp32'][-1]) / curves['fp32'][-1]:+.2%} |")
    print(f"| validation loss after ({settings.val_rows} rows, llm_eval) | {val['fp32']:.4f} | {val['bf16']:.4f} | "
          f"{(val['bf16'] - val['fp32']) / val['fp32']:+.2%} |")
    print(f"| wall time of the run | {seconds['fp32']:.0f} s | {seconds['bf16']:.0f} s | "
          f"{seconds['bf16'] / seconds['fp32']:.2f}x |")


if __name__ == "__main__":
    main()
