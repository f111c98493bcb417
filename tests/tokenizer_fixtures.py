"""Shared by the tokenizer tests: the texts, and the tokenizers they run on.

Two tokenizers, so that the core tests run with and without files:
  "gpt2"     GPT-2's own vocab.json and merges.txt, loaded server-side from
             ../shared/data/gpt2-tokenizer (skipped when absent);
  "trained"  a tokenizer llm_bpe_train learns in the database from texts
             made here (no files), exported for the reference tokenizers.
The references are built from the same files: HF `tokenizers` and tiktoken.
"""
import inspect
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pg_llm_lab import tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2_DIR = DATA / "gpt2-tokenizer"
CORPUS = DATA / "tinyshakespeare" / "input.txt"
NO_GPT2 = f"GPT-2's tokenizer files are not at {GPT2_DIR}"
NO_CORPUS = f"Tiny Shakespeare is not at {CORPUS}"

# Text that stresses the pre-tokenizer and the byte level: every script class,
# emoji with ZWJ and modifiers, combining marks, each kind of whitespace run,
# digits of several systems, contractions in both cases, control characters,
# and pieces long enough to take the heap path of BPE (> 128 bytes).
UNICODE_SET = [
    "Héllo wörld, naïve café — déjà vu",
    "Ça va? Œuvre, façade, Straße, ÆØÅ æøå İı",
    "日本語のテキスト、中文字符串。한국어 문장입니다.",
    "I ❤️ 🍕! 👍🏽 family: 👨‍👩‍👧‍👦 flag: 🇫🇷 🏳️‍🌈 🧑🏿‍💻",
    "e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353 क्षि ﬁ ﬀ",
    "مرحبا بالعالم! النص العربي ١٢٣ ۴۵۶",
    "שָׁלוֹם עוֹלָם",
    "Ελληνικά Русский текст ไทย ພາສາລາວ ᚠᚢᚦ",
    "a\tb\t\tc  \n\n\n d\r\ne\u00a0f\u3000g \u2028h\u2009i   ",
    "tabs\t\t\t\tand spaces    \t  mixed \t",
    "\r\n\r\n  \r\n",
    "\n", " ", "  ", "\t \t", "",
    "1234567890 3.14159 1,000,000 ½ ⅓ Ⅻ ² ٣ 𝟘𝟙",
    "I'm you're they've he'll she'd it's don't 'S vs 's 'T 'Re it'S DON'T ''s 'll've",
    "\"quoted\" 'single' `back` «guillemets» „low“ ‘curly’ ’s",
    "$100 €50 ¥1000 @user #tag <html> a+b=c ~!@#$%^&*()_+",
    "∑ x² ≤ ∞, ∀ε>0 ∃δ: |f(x)−f(y)| < ε",
    "def f(x):\n    return x**2  # comment\n\n\nclass A:\n\tpass\n",
    "zero\u200bwidth\u200djoiner\ufeffBOM\u2060wj",
    "\x01\x02\x1b[31mred\x1b[0m\x7f bell\x07",
    "\x1c\x1d\x1e\x1f separators \x1cx\x1fy",
    "\u0085NEL\u0085 \u00ad soft\u00adhyphen",
    "a" * 1000,
    "😀" * 50,
    " " * 300 + "x",
    "ab" * 300 + "!",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 5,
    "ok <|endoftext|> next<|endoftext|><|endoftext|>end <|endoftext",
]


def sample_corpus() -> list[str]:
    """Texts to train on without any file: the set above, and the docstrings
    of a few standard modules (English prose, code, punctuation)."""
    import argparse
    import collections
    import json
    import pathlib
    import textwrap
    docs = [inspect.getdoc(obj) or "" for module in (argparse, collections, json, pathlib, textwrap)
            for _, obj in inspect.getmembers(module) if inspect.isclass(obj) or inspect.isfunction(obj)]
    return [text for text in UNICODE_SET + docs if text] * 3


@dataclass
class Tok:
    """A tokenizer in the database, its files, and the reference encoders."""
    model: str
    vocab: Path
    merges: Path
    hf: object
    tiktoken: object | None


def make_readable(path: Path) -> None:
    """Let the server (another OS user when we are root) read path."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        p.chmod(0o777 if p.is_dir() else 0o644)


@pytest.fixture(scope="session")
def tok_dir():
    """A temporary folder the server can read and write."""
    path = Path(tempfile.mkdtemp(prefix="pg_llm_tok_"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def gpt2_files(tok_dir) -> tuple[Path, Path]:
    """GPT-2's two files, copied where the server can read them."""
    if not GPT2_DIR.is_dir():
        pytest.skip(NO_GPT2)
    out = tok_dir / "gpt2"
    if not out.exists():
        out.mkdir()
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(GPT2_DIR / name, out / name)
        make_readable(out)
    return out / "vocab.json", out / "merges.txt"


@pytest.fixture(scope="session")
def tokenizers(db_url, tok_dir):
    """name -> Tok, made on first use; the models are dropped at the end."""
    made = {}

    def get(name):
        if name in made:
            return made[name]
        with psycopg.connect(db_url, autocommit=True) as conn:
            if name == "gpt2":
                vocab, merges = gpt2_files(tok_dir)
                conn.execute("SELECT pg_llm_load_bpe(%s, %s, 'tok_gpt2')", [str(vocab), str(merges)])
                made[name] = Tok("tok_gpt2", vocab, merges, tokenizer.hf_tokenizer(vocab, merges),
                                 tokenizer.tiktoken_encoding(vocab))
            elif name == "trained":
                conn.execute("SELECT llm_bpe_train('tok_trained', %s::text[], 1200)", [sample_corpus()])
                vocab, merges = tokenizer.export_tokenizer(conn, "tok_trained", tok_dir / "trained")
                made[name] = Tok("tok_trained", vocab, merges, tokenizer.hf_tokenizer(vocab, merges),
                                 tokenizer.tiktoken_encoding(vocab))
        return made[name]

    yield get
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(r"DELETE FROM llm_tokenizer WHERE model LIKE 'tok\_%'")


@pytest.fixture(params=["gpt2", "trained"])
def tok(request, tokenizers) -> Tok:
    return tokenizers(request.param)
