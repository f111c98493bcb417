"""Streamed generation: how soon the first token reaches a psycopg client.

    python bench/bench_generation.py                          # GPT-2 small, prompts of 16 and 128 tokens
    python bench/bench_generation.py --threads 2 --prompt 16 --tokens 16 --repeat 3

One random GPT-2 small (124M parameters; model `bench_gen`) is loaded once,
with GPT-2's real tokenizer when its files are at hand (../shared/data, or
$PG_LLM_LAB_SHARED_DATA).  For each prompt length T, with the same sampling
settings everywhere (--temperature, --top-k, --top-p, --seed), the client
measures, as wall-clock time at the client, best of --repeat:

* prefill: SELECT llm_generate_tokens(model, prompt, 1, ...) -- the prompt's
  forward pass and the first pick, which is what a stream does before its
  first row;
* decode step: (llm_generate_tokens with 1 + K new tokens - prefill) / K,
  K = --tokens: one more token through the KV cache;
* stream, tokens: BEGIN; DECLARE c NO SCROLL CURSOR FOR SELECT (r).* FROM
  (SELECT llm_generate_stream_tokens(...) AS r) s; FETCH 1 ... -- the time
  from DECLARE to the first row (time to first row, TTFR) and to the last of
  1 + K rows;
* stream, text (with the tokenizer): PGLLMClient.stream() -- the same over
  llm_generate_stream, time to the first event and to the last.

Target: TTFR <= prefill + one decode step + 20 ms (the first row leaves as
soon as the first token is picked; the rest of the generation does not
delay it).  The weights are loaded (and timed: "cold") before any of this.
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import pg_llm_lab
from pg_llm_lab import tokenizer as tokenizers
from pg_llm_lab.client import PGLLMClient

MODEL = "bench_gen"
STREAM_TOKENS = ("SELECT (r).* FROM (SELECT llm_generate_stream_tokens(%s, %s, %s, %s, %s, %s, %s,"
                 " stop_ids => '{}') AS r) AS s")


def ensure_model(conn, n_layer: int) -> None:
    """A random GPT-2 small shape (n_layer layers) as MODEL, unless already there."""
    have = conn.execute("SELECT n_layer FROM llm_model_config WHERE model = %s", (MODEL,)).fetchone()
    if have and have[0] == n_layer and \
            conn.execute("SELECT count(*) FROM llm_param WHERE model = %s", (MODEL,)).fetchone()[0] > 0:
        return
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, bos_token_id=50256, eos_token_id=50256)).eval()
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", (MODEL,))
    print(f"loading a random GPT-2 ({n_layer} layers) as {MODEL} ...", flush=True)
    pg_llm_lab.import_hf(conn, model, MODEL, progress=True)


def ensure_tokenizer(conn) -> bool:
    """GPT-2's tokenizer as MODEL's, if its files are at hand."""
    if tokenizers.has_tokenizer(conn, MODEL):
        return True
    data = tokenizers.shared_data_dir()
    if data is None or not (data / "gpt2-tokenizer" / "vocab.json").exists():
        print("GPT-2's tokenizer files not found: the text stream is skipped")
        return False
    tokenizers.load_tokenizer(conn, data / "gpt2-tokenizer" / "vocab.json",
                              data / "gpt2-tokenizer" / "merges.txt", MODEL)
    return True


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def stream_tokens(conn, prompt, n, sampling) -> tuple[float, float, int]:
    """(time to the first row, time to the last, rows) of a cursor over the token stream."""
    with conn.transaction():
        t0 = time.perf_counter()
        conn.execute("DECLARE c NO SCROLL CURSOR FOR " + STREAM_TOKENS, (MODEL, prompt, n, *sampling))
        conn.execute("FETCH 1 FROM c").fetchone()
        first = time.perf_counter() - t0
        rows = 1
        while conn.execute("FETCH 1 FROM c").fetchone() is not None:
            rows += 1
        return first, time.perf_counter() - t0, rows


def stream_text(client, prompt, n, sampling) -> tuple[float, float, int]:
    temperature, top_k, top_p, seed = sampling
    t0 = time.perf_counter()
    events = client.stream(prompt, n, temperature, top_k, top_p, seed=seed, stop_ids=[])
    next(events)
    first = time.perf_counter() - t0
    rows = 1 + sum(1 for _ in events)
    return first, time.perf_counter() - t0, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, nargs="+", default=[16, 128], help="prompt lengths in tokens")
    p.add_argument("--tokens", type=int, default=32, help="K: new tokens after the first")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--layers", type=int, default=12, help="GPT-2 small has 12")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    sampling = (args.temperature, args.top_k, args.top_p, args.seed)

    conn = pg_llm_lab.connect()
    conn.execute("SELECT set_config('pg_llm.threads', %s, false)", (str(args.threads),))
    ensure_model(conn, args.layers)
    has_tokenizer = ensure_tokenizer(conn)
    client = PGLLMClient(conn, model=MODEL)
    conn.execute("SELECT llm_model_cache_clear()")
    cold = timed(lambda: conn.execute("SELECT llm_generate_tokens(%s, ARRAY[1], 1, 0)", (MODEL,)))
    print(f"threads {args.threads}; cold first call (decoding the weights): {cold * 1000:.0f} ms")

    corpus = None
    if has_tokenizer:
        data = tokenizers.shared_data_dir()
        text = (data / "tinyshakespeare" / "input.txt").read_text()[:20000]
        corpus = client.encode(text)
    print(f"{'T':>5} {'prefill':>9} {'decode':>9} {'TTFR':>9} {'target':>9} {'ok':>3} {'total':>9}"
          f" {'rows':>5} | {'text TTFR':>9} {'total':>9}   (ms)")
    for T in args.prompt:
        prompt = corpus[:T] if corpus else [(17 * i) % 50000 for i in range(T)]
        text_prompt = client.decode(prompt) if has_tokenizer else None
        one = "SELECT llm_generate_tokens(%s, %s, %s, %s, %s, %s, %s, stop_ids => '{}')"
        prefill, gen, ttfr, total, ttfr_text, total_text = ([] for _ in range(6))
        for _ in range(args.repeat):  # interleaved: all meet the same background load
            prefill.append(timed(lambda: conn.execute(one, (MODEL, prompt, 1, *sampling))))
            gen.append(timed(lambda: conn.execute(one, (MODEL, prompt, 1 + args.tokens, *sampling))))
            first, last, rows = stream_tokens(conn, prompt, 1 + args.tokens, sampling)
            ttfr.append(first)
            total.append(last)
            if has_tokenizer:
                first, last, _ = stream_text(client, text_prompt, 1 + args.tokens, sampling)
                ttfr_text.append(first)
                total_text.append(last)
        step = (min(gen) - min(prefill)) / args.tokens
        target = min(prefill) + step + 0.020
        text_cols = f"{min(ttfr_text) * 1000:9.1f} {min(total_text) * 1000:9.1f}" if has_tokenizer else \
            f"{'-':>9} {'-':>9}"
        print(f"{T:5d} {min(prefill) * 1000:9.1f} {step * 1000:9.2f} {min(ttfr) * 1000:9.1f}"
              f" {target * 1000:9.1f} {'yes' if min(ttfr) <= target else 'NO':>3} {min(total) * 1000:9.1f}"
              f" {rows:5d} | {text_cols}")


if __name__ == "__main__":
    main()
