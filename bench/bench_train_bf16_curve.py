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

Beside them (unless --no-torch), the same two runs in PyTorch: HF's
GPT2LMHeadModel from the same initial weights, the same batches (the ones
llm_train logged), nanoGPT's loop of tests/train_reference.py, in fp32 and
under torch.autocast('cpu', dtype=torch.bfloat16): how far autocast's curve
is from fp32's is the yardstick for pg_llm's.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import sys
from pathlib import Path

import numpy as np

import pg_llm_lab
from pg_llm_lab import demo


def torch_curves(conn, model: str, since: int, settings, steps: int, init: dict) -> dict:
    """The losses of PyTorch's fp32 and autocast runs over the batches model's run logged."""
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from train_reference import AdamWSettings, ReferenceTrainer, make_reference_model
    batches = []
    for (ids,) in conn.execute("SELECT batch FROM llm_train_log WHERE model = %s AND id > %s ORDER BY id",
                               [model, since]).fetchall():
        rows = conn.execute("SELECT d.tokens, d.target FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(id, n) "
                            "JOIN llm_dataset d ON d.id = u.id ORDER BY u.n", [ids]).fetchall()
        batches.append((np.array([r[0] for r in rows]), np.array([r[1] for r in rows])))
    adamw = AdamWSettings(lr=settings.lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, max_grad_norm=1.0,
                          warmup_steps=settings.warmup, decay_steps=steps, min_lr=settings.lr / 10)
    curves = {}
    for dtype in ("fp32", "bf16"):
        hf = make_reference_model(dict(n_layer=settings.n_layer, n_head=settings.n_head, n_embd=settings.n_embd,
                                       n_positions=settings.block, vocab_size=settings.vocab))
        hf.transformer.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in init.items()}, strict=False)
        trainer, losses = ReferenceTrainer(hf, adamw), []
        for tokens, targets in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                losses.append(trainer.step(tokens, targets).loss)
        curves[dtype] = np.array(losses)
        print(f"PyTorch {dtype}: {len(losses)} steps", flush=True)
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, help="pg_llm.threads (default: the server's)")
    parser.add_argument("--simd", choices=["scalar", "avx2", "avx512"])
    parser.add_argument("--no-torch", action="store_true", help="only pg_llm's runs")
    args = parser.parse_args()

    settings = dataclasses.replace(demo.DEFAULT, model="bf16curve", minutes=None, steps=args.steps,
                                   val_rows=200, warmup=min(demo.DEFAULT.warmup, args.steps // 10))  # as demo.run
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
            if dtype == "fp32":
                with conn.cursor(binary=True) as cur:
                    cur.execute("SELECT name, data FROM llm_param WHERE model = %s", [model])
                    init = dict(cur.fetchall())
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
            if dtype == "fp32" and not args.no_torch:
                reference = torch_curves(conn, model, since, settings, settings.steps, init)
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
    named = {f"pg_llm {d}": c for d, c in curves.items()}
    if not args.no_torch:
        named |= {f"PyTorch {'autocast bf16' if d == 'bf16' else d}": c for d, c in reference.items()}
    for label, c in named.items():
        print(f"| {label} | " + " | ".join(f"{c[max(0, m - 10):m].mean():.3f}" for m in marks) + " |")
    print()
    print("| | fp32 | bf16 | bf16 vs fp32 |")
    print("| --- | --- | --- | --- |")
    f32, f16 = final(curves["fp32"]), final(curves["bf16"])
    print(f"| final training loss (mean of the last 20 steps) | {f32:.4f} | {f16:.4f} | {(f16 - f32) / f32:+.2%} |")
    if not args.no_torch:
        t32, t16 = final(reference["fp32"]), final(reference["bf16"])
        print(f"| PyTorch: the same, fp32 and autocast | {t32:.4f} | {t16:.4f} | {(t16 - t32) / t32:+.2%} |")
    print(f"| last step's loss | {curves['fp32'][-1]:.4f} | {curves['bf16'][-1]:.4f} | "
          f"{(curves['bf16'][-1] - curves['fp32'][-1]) / curves['fp32'][-1]:+.2%} |")
    print(f"| validation loss after ({settings.val_rows} rows, llm_eval) | {val['fp32']:.4f} | {val['bf16']:.4f} | "
          f"{(val['bf16'] - val['fp32']) / val['fp32']:+.2%} |")
    print(f"| wall time of the run | {seconds['fp32']:.0f} s | {seconds['bf16']:.0f} s | "
          f"{seconds['bf16'] / seconds['fp32']:.2f}x |")


if __name__ == "__main__":
    main()
