"""What the notebooks of the learning path share: the learner's names, checks, the text.

    from pg_llm_lab.course import learner, mine, check, course_text
    me = learner(conn)                 # 'alice': $JUPYTERHUB_USER, else the database role
    model = mine(conn, "gpt")          # 'alice_gpt': every name a notebook creates is the learner's
    check(loss < 5, "the loss should fall below 5 nats after training")
    text, source = course_text(conn)   # real text to train on, whatever the network allows

A class shares one server, so nothing a notebook creates may collide with a
neighbour's: models, tokenizers, dataset splits and tables are named
`mine(conn, ...)`.  Checks that the test suite relies on live in cells tagged
`check` and call check(), which tells a learner what went wrong and what to
do, instead of a bare `assert`.

The text: Tiny Shakespeare (1.1 MB, the corpus of nanoGPT's shakespeare_char
example) when it can be had -- a copy named by $PG_LLM_LAB_SHAKESPEARE, one
downloaded earlier into the lab's data folder, or a download checked
against its SHA-256 -- else the corpus `pg-llm-lab demo` builds offline: the
docstrings of Python's standard library and PostgreSQL's pg_description.
$PG_LLM_LAB_OFFLINE=1 (the test suite sets it) forbids the download.
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from collections import Counter
from pathlib import Path

import platformdirs

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_BYTES = 1_115_394
# The offline corpus: as much of the standard library's docstrings as `pg-llm-lab demo` takes.
OFFLINE_STDLIB_BYTES = 500_000


class CheckFailed(AssertionError):
    """A check of a notebook failed: its message says what to look at."""


def check(condition, message: str) -> None:
    """Raise CheckFailed(message) unless condition holds.

    The notebooks' checks (in cells tagged `check`) use this: a learner who
    changed something sees what the check expected and why, and the test
    suite, which runs every cell, fails with the same words.
    """
    if not condition:
        raise CheckFailed(message)


# ---- names -----------------------------------------------------------------------------

def _identifier(name: str) -> str:
    """name as a lower-case SQL identifier of letters, digits and _ (a digit first gets 'u')."""
    cleaned = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "learner"
    return f"u{cleaned}" if cleaned[0].isdigit() else cleaned


def learner(conn=None) -> str:
    """The learner's name: $JUPYTERHUB_USER (a JupyterHub), else $PG_LLM_LAB_LEARNER,
    else the database role of conn (current_user), as a lower-case identifier."""
    name = os.environ.get("JUPYTERHUB_USER") or os.environ.get("PG_LLM_LAB_LEARNER")
    if not name:
        if conn is None:
            raise ValueError("learner(): pass a connection (its role names the learner) "
                             "or set $PG_LLM_LAB_LEARNER")
        name = conn.execute("SELECT current_user").fetchone()[0]
    return _identifier(name)


def mine(conn, what: str) -> str:
    """The learner's own name for a thing a notebook creates: mine(conn, 'gpt') -> 'alice_gpt'."""
    return f"{learner(conn)}_{_identifier(what)}"


# ---- the text --------------------------------------------------------------------------

def shakespeare_cache() -> Path:
    """Where a downloaded Tiny Shakespeare is kept (the lab's data folder)."""
    return platformdirs.user_data_path("pg_llm_lab") / "tinyshakespeare.txt"


def _verified(data: bytes) -> bool:
    return len(data) == SHAKESPEARE_BYTES and hashlib.sha256(data).hexdigest() == SHAKESPEARE_SHA256


def tiny_shakespeare(download: bool | None = None, timeout: float = 15.0) -> str | None:
    """Tiny Shakespeare's text, or None when it cannot be had.

    Looked for in $PG_LLM_LAB_SHAKESPEARE (a file), then the cache; else
    downloaded (unless download is False, or None and $PG_LLM_LAB_OFFLINE is
    set), checked against its SHA-256 and cached.  A copy that does not match
    is never used.
    """
    for candidate in filter(None, [os.environ.get("PG_LLM_LAB_SHAKESPEARE"), shakespeare_cache()]):
        path = Path(candidate)
        if path.is_file() and _verified(data := path.read_bytes()):
            return data.decode("utf-8")
    if download is None:
        download = not os.environ.get("PG_LLM_LAB_OFFLINE")
    if not download:
        return None
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=timeout) as response:
            data = response.read(SHAKESPEARE_BYTES + 1)
    except OSError as exc:
        print(f"Tiny Shakespeare could not be downloaded ({exc}); using the offline corpus.")
        return None
    if not _verified(data):
        print("The downloaded Tiny Shakespeare does not match its SHA-256; using the offline corpus.")
        return None
    shakespeare_cache().parent.mkdir(parents=True, exist_ok=True)
    shakespeare_cache().write_bytes(data)
    return data.decode("utf-8")


def offline_text(conn) -> str:
    """The corpus `pg-llm-lab demo` builds with no network: the standard library's
    docstrings and PostgreSQL's pg_description (about 0.6 MB)."""
    from .demo import pg_descriptions, stdlib_docstrings

    return f"{stdlib_docstrings(OFFLINE_STDLIB_BYTES)}\n\n{pg_descriptions(conn)}"


def course_text(conn, download: bool | None = None) -> tuple[str, str]:
    """(text, what it is): Tiny Shakespeare if it can be had, else the offline corpus."""
    text = tiny_shakespeare(download)
    if text is not None:
        return text, "Tiny Shakespeare (1.1 MB: 40,000 lines of Shakespeare's plays)"
    return offline_text(conn), ("Python's standard library docstrings + PostgreSQL's pg_description "
                                "(built offline, about 0.6 MB)")


# ---- the learner's model (notebooks 08 to 11) ------------------------------------------

MODEL = "gpt"        # mine(conn, MODEL): the GPT-2 notebook 08 trains on the course text
TRAINING_NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "08_training_on_text.ipynb"


def quick() -> bool:
    """$PG_LLM_LAB_QUICK is set: notebook 08 trains for a few steps only (a test of the whole path)."""
    return bool(os.environ.get("PG_LLM_LAB_QUICK"))


def held_out_prompt(held_out: str) -> str:
    """A prompt that sounds like the text: the most common start (up to two words: a
    capital first, letters, maybe a ':' or ',') of the first lines of its held-out
    paragraphs, e.g. a speaker 'ROMEO:' or 'Return the'."""
    first_lines = (p.strip().splitlines()[0] for p in re.split(r"\n\s*\n", held_out) if p.strip())
    starts = Counter(" ".join(words) for words in (line.split()[:2] for line in first_lines)
                     if words[0][0].isupper() and all(re.fullmatch(r"[A-Za-z]+[:,]?", w) for w in words))
    return starts.most_common(1)[0][0] if starts else "The"


def is_trained(conn, model: str) -> bool:
    """Has `model` taken a training step and does a tokenizer of its name exist?"""
    return conn.execute("SELECT EXISTS (SELECT FROM llm_train_log WHERE model = %s) "
                        "AND EXISTS (SELECT FROM llm_tokenizer WHERE model = %s)", [model, model]).fetchone()[0]


def trained_model(conn) -> str:
    """The learner's model trained by notebook 08, mine(conn, 'gpt').

    When 08 has not been run yet, it is run now, in quick mode (a short
    training; $PG_LLM_LAB_QUICK), in a kernel of its own that connects as
    this one does: 09, 10 and 11 then run on their own.
    """
    import subprocess
    import sys

    model = mine(conn, MODEL)
    if is_trained(conn, model):
        return model
    if not TRAINING_NOTEBOOK.is_file():
        raise FileNotFoundError(f"{model} is not trained yet and {TRAINING_NOTEBOOK} is missing: run notebook 08")
    print(f"{model} is not trained yet: running {TRAINING_NOTEBOOK.name} now, in quick mode (a minute or two)...",
          flush=True)
    run = ("import sys, nbclient, nbformat; nb = nbformat.read(sys.argv[1], as_version=4); "
           "nbclient.NotebookClient(nb, timeout=300, resources={'metadata': {'path': sys.argv[2]}}).execute()")
    done = subprocess.run([sys.executable, "-c", run, str(TRAINING_NOTEBOOK), str(TRAINING_NOTEBOOK.parent)],
                          env={**os.environ, "PG_LLM_LAB_QUICK": "1"}, capture_output=True, text=True)
    if done.returncode != 0 or not is_trained(conn, model):
        raise RuntimeError(f"running {TRAINING_NOTEBOOK.name} failed: open it and run it yourself\n"
                           + done.stderr[-2000:])
    return model


def course_prompt(conn) -> str:
    """The prompt notebook 08 used: held_out_prompt of the held-out paragraphs it
    keeps in the learner's table mine(conn, 'gpt_paragraphs')."""
    held_out = conn.execute(f"SELECT string_agg(paragraph, E'\\n\\n' ORDER BY id) FROM {mine(conn, 'gpt_paragraphs')} "
                            "WHERE part = 'val'").fetchone()[0]
    return held_out_prompt(held_out or "")
