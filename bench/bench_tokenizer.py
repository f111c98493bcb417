"""GPT-2's tokenizer inside PostgreSQL vs HuggingFace `tokenizers` and tiktoken.

    python bench/bench_tokenizer.py                       # files from ../shared/data
    python bench/bench_tokenizer.py --vocab V --merges M --corpus input.txt --train-vocab 4096

encode: the whole corpus (Tiny Shakespeare, 1.1 MB) as one text, one call each:
  * pg_llm: llm_encode, server-side time from EXPLAIN ANALYZE over the text
    stored in a temporary table, minus the same query with length() instead
    (reading the text); the tokenizer is loaded first (a short encode), its
    cache of encoded pieces is empty ("cold") -- and then full ("warm", a
    second call on the same text);
  * HF tokenizers: Tokenizer(BPE.from_file(vocab, merges)), ByteLevel
    pre-tokenizer and decoder, add_prefix_space=False; Tokenizer.encode;
  * tiktoken: an Encoding built offline from vocab.json (ranks from the
    tokens' bytes, GPT-2's pattern); encode_ordinary.
  The ids of all three are checked to be the same.
train: a byte-level BPE to --train-vocab tokens from the corpus's lines:
  * pg_llm: llm_bpe_train(model, 'SELECT line FROM a table', vocab) (the time
    of the SELECT, writing the vocab and merges rows included);
  * HF: BpeTrainer(vocab_size - 1 (pg_llm adds <|endoftext|>), min_frequency
    0, initial_alphabet = ByteLevel.alphabet()), train_from_iterator(lines).
  The merges of both are checked to be the same.

Targets (issue 9): encode faster than HF tokenizers and within 1.5x of
tiktoken; train within 2x of HF's BpeTrainer.  One run each, on one machine:
run it when nothing else is.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pg_llm_lab
from pg_llm_lab import tokenizer

MODEL = "bench_gpt2_tok"
TRAINED = "bench_trained_tok"


def explain_ms(conn, sql: str, params=()) -> float:
    plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()[0]
    return plan[0]["Execution Time"]


def server_readable_copy(paths: list[Path]) -> list[Path]:
    """The files copied where the server (maybe another OS user) can read them."""
    folder = Path(tempfile.mkdtemp(prefix="pg_llm_bench_tok_"))
    folder.chmod(0o755)
    out = []
    for p in paths:
        shutil.copyfile(p, folder / p.name)
        (folder / p.name).chmod(0o644)
        out.append(folder / p.name)
    return out


def bench_encode(conn, vocab: Path, merges: Path, text: str) -> dict:
    v, m = server_readable_copy([vocab, merges])
    conn.execute("SELECT pg_llm_load_bpe(%s, %s, %s)", [str(v), str(m), MODEL])
    shutil.rmtree(v.parent, ignore_errors=True)
    conn.execute("DROP TABLE IF EXISTS bench_text")
    conn.execute("CREATE TEMP TABLE bench_text AS SELECT %s::text AS t", [text])

    conn.execute("SELECT llm_tokenizer_cache_clear()")
    conn.execute("SELECT llm_encode('load the tokenizer', %s)", [MODEL])
    read_ms = explain_ms(conn, "SELECT length(t) FROM bench_text")
    cold_ms = explain_ms(conn, "SELECT cardinality(llm_encode(t, %s)) FROM bench_text", [MODEL]) - read_ms
    warm_ms = explain_ms(conn, "SELECT cardinality(llm_encode(t, %s)) FROM bench_text", [MODEL]) - read_ms
    ids = conn.execute("SELECT llm_encode(t, %s) FROM bench_text", [MODEL]).fetchone()[0]

    hf = tokenizer.hf_tokenizer(vocab, merges)
    hf.encode("warm up")
    start = time.perf_counter()
    hf_ids = hf.encode(text).ids
    hf_ms = (time.perf_counter() - start) * 1e3

    enc = tokenizer.tiktoken_encoding(vocab)
    enc.encode_ordinary("warm up")
    start = time.perf_counter()
    tt_ids = enc.encode_ordinary(text)
    tt_ms = (time.perf_counter() - start) * 1e3

    if not ids == hf_ids == tt_ids:
        sys.exit("the three tokenizers disagree: the numbers would mean nothing")
    conn.execute("DELETE FROM llm_tokenizer WHERE model = %s", [MODEL])
    return dict(tokens=len(ids), cold=cold_ms, warm=warm_ms, hf=hf_ms, tiktoken=tt_ms)


def bench_train(conn, lines: list[str], vocab_size: int) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    conn.execute("DROP TABLE IF EXISTS bench_lines")
    conn.execute("CREATE TEMP TABLE bench_lines (line text)")
    with conn.cursor().copy("COPY bench_lines (line) FROM STDIN") as copy:
        for line in lines:
            copy.write_row((line,))
    start = time.perf_counter()
    conn.execute("SELECT llm_bpe_train(%s, 'SELECT line FROM bench_lines', %s)", [TRAINED, vocab_size])
    pg_ms = (time.perf_counter() - start) * 1e3
    merges = [tuple(r) for r in conn.execute(
        'SELECT "left", "right" FROM llm_bpe_merges WHERE model = %s ORDER BY rank', [TRAINED])]
    conn.execute("DELETE FROM llm_tokenizer WHERE model = %s", [TRAINED])

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    start = time.perf_counter()
    tok.train_from_iterator(lines, trainer=trainer)
    hf_ms = (time.perf_counter() - start) * 1e3
    hf_merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                 for m in json.loads(tok.to_str())["model"]["merges"]]
    if merges != hf_merges:
        sys.exit("llm_bpe_train and HF's BpeTrainer learned different merges: the numbers would mean nothing")
    return dict(merges=len(merges), pg=pg_ms, hf=hf_ms)


def main() -> int:
    data = tokenizer.shared_data_dir()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--vocab", type=Path, default=data and data / "gpt2-tokenizer" / "vocab.json")
    p.add_argument("--merges", type=Path, default=data and data / "gpt2-tokenizer" / "merges.txt")
    p.add_argument("--corpus", type=Path, default=data and data / "tinyshakespeare" / "input.txt")
    p.add_argument("--train-vocab", type=int, default=4096)
    args = p.parse_args()
    for name in ("vocab", "merges", "corpus"):
        if getattr(args, name) is None or not getattr(args, name).exists():
            p.error(f"--{name}: file not found (default: ../shared/data, or $PG_LLM_LAB_SHARED_DATA)")

    text = args.corpus.read_text()
    with pg_llm_lab.connect() as conn:
        enc = bench_encode(conn, args.vocab, args.merges, text)
        train = bench_train(conn, text.splitlines(keepends=True), args.train_vocab)

    print(f"encode {args.corpus.name} ({len(text.encode()) / 1e6:.2f} MB, {enc['tokens']} tokens, one call each)")
    print(f"  {'pg_llm llm_encode (cold cache)':34} {enc['cold']:9.1f} ms")
    print(f"  {'pg_llm llm_encode (warm cache)':34} {enc['warm']:9.1f} ms")
    print(f"  {'HF tokenizers':34} {enc['hf']:9.1f} ms")
    print(f"  {'tiktoken':34} {enc['tiktoken']:9.1f} ms")
    print(f"  pg_llm (cold) / HF       = {enc['cold'] / enc['hf']:.2f}   (target < 1)")
    print(f"  pg_llm (cold) / tiktoken = {enc['cold'] / enc['tiktoken']:.2f}   (target <= 1.5)")
    print(f"train byte-level BPE to {args.train_vocab} tokens ({train['merges']} merges, the same in both)")
    print(f"  {'pg_llm llm_bpe_train':34} {train['pg']:9.1f} ms")
    print(f"  {'HF BpeTrainer':34} {train['hf']:9.1f} ms")
    print(f"  pg_llm / HF = {train['pg'] / train['hf']:.2f}   (target <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
