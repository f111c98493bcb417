"""`pg-llm-lab demo`: train a small GPT-2 inside PostgreSQL, in one command.

    from pg_llm_lab import demo
    demo.run(url, demo.DEFAULT)                   # what `pg-llm-lab demo` does

Every step is SQL on the server; this module only orders them and prints:
a corpus from text every machine has (the docstrings of Python's standard
library and PostgreSQL's own pg_description), a byte-level BPE tokenizer
learnt from it (llm_bpe_train), blocks of tokens in llm_dataset (splits
'<model>-train' and '<model>-val', so the user's own rows are left alone), a
GPT-2 registered and initialised (llm_model_config, llm_init), the
validation loss and samples before, CALL llm_train with a progress bar and a
live loss sparkline, the loss and samples after, and a checkpoint.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import math
import os
import re
import signal
import sys
import sysconfig
import threading
import time
from pathlib import Path

import psycopg

from . import db
from .client import PGLLMClient


@dataclasses.dataclass(frozen=True)
class Settings:
    """One demo run: the data, the model's shape and the training schedule."""
    model: str = "demo"
    corpus: str | None = None       # a UTF-8 text file instead of the built-in corpus
    stdlib_bytes: int = 500_000     # cap of the standard library's docstrings
    vocab: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block: int = 64
    batch: int = 12
    steps: int = 2000               # at most; DEFAULT caps the training at 3.5 minutes
    lr: float = 2e-3
    warmup: int = 20
    val_fraction: float = 0.1
    val_rows: int | None = None     # rows of the val split scored before and after (None: all)
    seed: int = 1337
    sample_tokens: int = 40
    minutes: float | None = None    # cap the training's wall time (steps are then an upper bound)


# A slower or busier machine trains fewer steps rather than running past ~4 minutes in all.
DEFAULT = Settings(minutes=3.5)
# Seconds, for the tests: a few hundred tokens of vocabulary, one small layer.
TINY = Settings(stdlib_bytes=60_000, vocab=320, n_layer=1, n_head=2, n_embd=32, block=32, batch=8,
                steps=40, lr=1e-2, warmup=4, val_rows=20, sample_tokens=12)

SAVE_EVERY = 50       # llm_train writes the weights back every 50 steps
TIMING_STEPS = 6      # the call that times a step: 5 intervals between its 6 log rows
# A long run's steps take longer than the timing call's first few: on 2 quiet AVX2 cores the
# demo's 2,000 steps averaged 0.129 s (its progress reader and sparkline included) where the
# timing call gave 0.097 s, and a bare 150-step call 0.112 s.  The plan allows for that.
LONG_RUN_FACTOR = 1.35

PROMPTS = ["Return the", "The database"]     # for the built-in corpus; --corpus takes its own
REFERENCE = ("nanoGPT's baby GPT on a CPU (4 layers, 4 heads, width 128, block 64, batch 12) reaches "
             "~1.88 nats/char on Tiny Shakespeare in ~3 minutes")

# Parts of the standard library that are tests, demos or tools rather than documentation.
_STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "site-packages",
                "dist-packages", "__pycache__", "pydoc_data", "venv", "config"}


# ---- the corpus ------------------------------------------------------------------------

def stdlib_docstrings(limit: int, root: str | os.PathLike | None = None) -> str:
    """The docstrings of the standard library's modules, classes and functions, in file
    and source order, blank-line separated, at most `limit` UTF-8 bytes (whole docstrings)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    size = 0
    for path in _stdlib_files(root):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 40:
                continue
            cost = len(doc.encode()) + 2
            if size + cost > limit:
                return "\n\n".join(parts)
            parts.append(doc)
            size += cost
    return "\n\n".join(parts)


def _stdlib_files(root: Path):
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _STDLIB_SKIP and not d.startswith(("test", ".")))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith(("test_", "_test")):
                yield Path(directory, name)


def pg_descriptions(conn) -> str:
    """PostgreSQL's comments on its own objects (pg_description), in a fixed order."""
    rows = conn.execute("SELECT description FROM pg_description "
                        "ORDER BY classoid, objoid, objsubid").fetchall()
    return "\n\n".join(r[0] for r in rows)


def build_corpus(conn, settings: Settings) -> tuple[str, str]:
    """(text, where it came from)."""
    if settings.corpus:
        path = Path(settings.corpus).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return path.read_text(encoding="utf-8"), str(path)
    docs = stdlib_docstrings(settings.stdlib_bytes)
    described = pg_descriptions(conn)
    return (f"{docs}\n\n{described}",
            f"Python {sys.version_info.major}.{sys.version_info.minor} standard library docstrings "
            f"({_mb(docs)}) + PostgreSQL's pg_description ({_mb(described)})")


def _mb(text: str) -> str:
    return f"{len(text.encode()) / 1e6:.2f} MB"


# ---- the steps ----------------------------------------------------------------------------

def train_tokenizer(conn, settings: Settings, text: str) -> int:
    """llm_bpe_train on the text's paragraphs (the train split's: the val text is
    never seen before it is scored); returns the vocabulary size."""
    return conn.execute("SELECT llm_bpe_train(%s::text, %s::text[], %s::int)",
                        [settings.model, _paragraphs(text), settings.vocab]).fetchone()[0]


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(train text, val text): every k-th paragraph (k = 1 / val_fraction) is held out,
    so both splits come from every part of the corpus; a text of few paragraphs
    gives its last val_fraction instead (as nanoGPT does)."""
    paragraphs = _paragraphs(text)
    every = max(2, round(1 / val_fraction))
    if len(paragraphs) >= 10 * every:
        return ("\n\n".join(p for i, p in enumerate(paragraphs) if i % every != every - 1),
                "\n\n".join(p for i, p in enumerate(paragraphs) if i % every == every - 1))
    cut = len(text) - int(len(text) * val_fraction)
    return text[:cut], text[cut:]


def _held_out(text: str, settings: Settings) -> str:
    every = max(2, round(1 / settings.val_fraction))
    if len(_paragraphs(text)) >= 10 * every:
        return f"every {every}th paragraph"
    return f"the last {settings.val_fraction:.0%} of the text"


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def make_dataset(conn, settings: Settings, parts: tuple[str, str]) -> tuple[int, int, int]:
    """Encode the (train, val) texts into rows of llm_dataset, splits <model>-train
    and <model>-val; returns (tokens, train rows, val rows)."""
    with conn.transaction():
        conn.execute("DELETE FROM llm_dataset WHERE split = ANY(%s)", [list(_splits(settings))])
        n_tokens, rows = 0, []
        for part, split in zip(parts, _splits(settings)):
            tokens = conn.execute("SELECT llm_encode(%s, %s)", [part, settings.model]).fetchone()[0]
            n_tokens += len(tokens)
            rows.append(conn.execute("SELECT llm_dataset_from_tokens(%s::int[], %s::int, NULL, %s::text)",
                                     [tokens, settings.block, split]).fetchone()[0])
    return n_tokens, rows[0], rows[1]


def _splits(settings: Settings) -> tuple[str, str]:
    return f"{settings.model}-train", f"{settings.model}-val"


def register_model(conn, settings: Settings) -> int:
    """(Re-)register the model's shape and give it GPT-2's initialisation; returns its parameters."""
    with conn.transaction():
        conn.execute("DELETE FROM llm_param WHERE model = %s", [settings.model])   # its shape may change
        conn.execute(
            "INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (model) DO UPDATE SET n_layer = excluded.n_layer, "
            "n_head = excluded.n_head, n_embd = excluded.n_embd, n_positions = excluded.n_positions, "
            "vocab_size = excluded.vocab_size",
            [settings.model, settings.n_layer, settings.n_head, settings.n_embd, settings.block, settings.vocab])
        conn.execute("SELECT llm_init(%s::text, %s::int)", [settings.model, settings.seed])
    return conn.execute("SELECT sum((SELECT coalesce(exp(sum(ln(d))), 1) FROM unnest(llm_shape(data)) d))"
                        "::bigint FROM llm_param WHERE model = %s", [settings.model]).fetchone()[0]


@dataclasses.dataclass(frozen=True)
class Score:
    nats_per_token: float
    nats_per_byte: float
    tokens: int
    bytes: int


def evaluate(conn, settings: Settings) -> Score:
    """Mean cross-entropy over the first val_rows rows of the val split, per token
    (llm_eval) and per byte of the text those target tokens decode to."""
    _, val = _splits(settings)
    loss, _, tokens, _ = conn.execute("SELECT * FROM llm_eval(%s::text, %s::text, %s::int)",
                                      [settings.model, val, settings.val_rows]).fetchone()
    n_bytes = conn.execute(
        "SELECT sum(octet_length(llm_decode_bytes(array(SELECT t FROM unnest(d.target) t WHERE t <> -100), %s)))"
        " FROM (SELECT target FROM llm_dataset WHERE split = %s ORDER BY id LIMIT %s) d",
        [settings.model, val, settings.val_rows]).fetchone()[0]
    return Score(loss, loss * tokens / n_bytes, tokens, n_bytes)


def prompts(settings: Settings, val_text: str) -> list[str]:
    """PROMPTS for the built-in corpus; for a corpus file the first words (up to 3, on
    one line) of the first two held-out paragraphs (or lines), so they sound like the text."""
    if not settings.corpus:
        return PROMPTS
    lines = [p.strip().splitlines()[0] for p in _paragraphs(val_text)]
    if len(lines) < 2:
        lines = [line for line in val_text.splitlines()[1:] if line.strip()]   # the first may be cut
    found = list(dict.fromkeys(" ".join(line.split()[:3]) for line in lines if line.split()))[:2]
    return found or PROMPTS


def samples(conn, settings: Settings, starts: list[str]) -> list[str]:
    """What the model writes after each prompt: sampled at temperature 0.8, top-k 40, fixed seed."""
    client = PGLLMClient(conn, settings.model)
    return [client.generate(prompt, settings.sample_tokens, temperature=0.8, top_k=40, seed=settings.seed)
            for prompt in starts]


# ---- the live loss figure -------------------------------------------------------------------

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values, width: int = 48) -> str:
    """values as a line of block characters, averaged down to at most `width`."""
    values = [v for v in values if v == v]
    if not values:
        return ""
    if len(values) > width:
        buckets = [values[i * len(values) // width:(i + 1) * len(values) // width] for i in range(width)]
        values = [sum(b) / len(b) for b in buckets]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(_BLOCKS[min(len(_BLOCKS) - 1, int((v - low) / span * len(_BLOCKS)))] for v in values)


class LossFigure:
    """Follows the rows of llm_train_log as PGLLMClient.train reads them: on a terminal
    a line above the progress bar that redraws (the loss so far as a sparkline);
    elsewhere a plain line every tenth of the run."""

    def __init__(self, steps: int, tty: bool, out=sys.stdout):
        self.steps, self.tty, self.out = steps, tty, out
        self.losses: list[float] = []
        self.line = None
        if tty:
            from tqdm.auto import tqdm
            self.line = tqdm(total=0, bar_format="{desc}", position=0, leave=True)

    def __call__(self, done: int, loss: float) -> None:
        self.losses.append(loss)
        if self.line is not None:
            self.line.set_description_str(self.describe())
        elif done == self.steps or done % max(1, self.steps // 10) == 0:
            print(f"  step {done:>5}/{self.steps}  loss {loss:.3f}", file=self.out, flush=True)

    def describe(self) -> str:
        first, last = self.losses[0], self.losses[-1]
        return f"loss {first:.2f} {sparkline(self.losses)} {last:.2f}"

    def close(self) -> None:
        if self.line is not None:
            self.line.close()


@contextlib.contextmanager
def _ctrl_c_cancels(conn, interrupted: list):
    """While inside, Ctrl-C (SIGINT) cancels the running statement on the server and
    is noted in `interrupted`, instead of a KeyboardInterrupt raised wherever the
    main thread happens to be."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum, frame):
        interrupted.append(True)
        conn.cancel_safe(timeout=10)

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def train(conn, settings: Settings, tty: bool, out=sys.stdout) -> tuple[list[tuple], bool]:
    """CALL llm_train through PGLLMClient.train (its progress bar on a terminal) with a
    LossFigure following the log too; returns (this run's llm_train_log rows, interrupted)."""
    figure = LossFigure(settings.steps, tty, out)
    client = PGLLMClient(conn, settings.model)
    train_split, _ = _splits(settings)
    since = conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
    interrupted = []
    try:
        with _ctrl_c_cancels(conn, interrupted):
            client.train(settings.steps, progress=tty, on_step=figure, batch_size=settings.batch, lr=settings.lr,
                         warmup=settings.warmup, min_lr=settings.lr / 10, weight_decay=0.1, clip=1.0,
                         seed=settings.seed, split=train_split, notice_every=0, save_every=SAVE_EVERY)
    except KeyboardInterrupt:       # outside the main thread: psycopg cancelled the CALL
        interrupted.append(True)
    except psycopg.errors.QueryCanceled:
        if not interrupted:
            raise                   # not our Ctrl-C: statement_timeout, another session
    finally:
        figure.close()
    log = conn.execute("SELECT step, loss, lr, grad_norm FROM llm_train_log WHERE model = %s AND id > %s "
                       "ORDER BY id", [settings.model, since]).fetchall()
    return log, bool(interrupted)


# ---- the run -------------------------------------------------------------------------------

def run(url: str, settings: Settings = DEFAULT, out=sys.stdout, tty: bool | None = None) -> int:
    """The whole demo on the server at url; returns the exit code (130: interrupted)."""
    if tty is None:
        tty = out.isatty()
    started = time.monotonic()

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    def section(title: str) -> None:
        say(f"\n== {title} " + "=" * max(0, 60 - len(title)))

    with db.connect(url) as conn:
        section("1. corpus")
        text, source = build_corpus(conn, settings)
        say(f"{source}: {_mb(text)}, {len(text):,} characters")

        parts = split_text(text, settings.val_fraction)
        starts = prompts(settings, parts[1])
        say(f"held out for validation: {_mb(parts[1])} ({_held_out(text, settings)})")

        section("2. tokenizer")
        tick = time.monotonic()
        vocab = train_tokenizer(conn, settings, parts[0])
        say(f"SELECT llm_bpe_train('{settings.model}', <{_mb(parts[0])} of paragraphs>, {settings.vocab});"
            f"  -- {vocab} tokens in {time.monotonic() - tick:.1f} s")
        settings = dataclasses.replace(settings, vocab=vocab)     # fewer when the text has no more pairs
        example = "Return the value of the database setting."
        ids = conn.execute("SELECT llm_encode(%s, %s)", [example, settings.model]).fetchone()[0]
        say(f"{example!r} -> {len(ids)} tokens {ids[:12]}{' ...' if len(ids) > 12 else ''}")

        section("3. dataset and model")
        tick = time.monotonic()
        n_tokens, train_rows, val_rows = make_dataset(conn, settings, parts)
        say(f"{n_tokens:,} tokens ({len(text.encode()) / n_tokens:.2f} bytes each) -> llm_dataset: "
            f"{train_rows} rows of {settings.block} in '{_splits(settings)[0]}', "
            f"{val_rows} in '{_splits(settings)[1]}' ({time.monotonic() - tick:.1f} s)")
        n_params = register_model(conn, settings)
        say(f"GPT-2 '{settings.model}': {settings.n_layer} layers, {settings.n_head} heads, width "
            f"{settings.n_embd}, context {settings.block}, vocab {settings.vocab}: {n_params:,} parameters "
            f"(llm_model_config, llm_init)")

        section("4. before training")
        before = evaluate(conn, settings)
        _print_score(say, before, settings)
        _print_samples(say, starts, samples(conn, settings, starts))

        section("5. training")
        steps = _steps_for(conn, settings) if settings.minutes else settings.steps
        settings = dataclasses.replace(settings, steps=steps, warmup=min(settings.warmup, steps // 10))
        say(f"CALL llm_train('{settings.model}', {steps}, batch_size => {settings.batch}, lr => {settings.lr}, "
            f"warmup => {settings.warmup}, split => '{_splits(settings)[0]}');   -- Ctrl-C stops it")
        tick = time.monotonic()
        log, interrupted = train(conn, settings, tty, out)
        seconds = time.monotonic() - tick
        losses = [row[1] for row in log if row[1] is not None]
        if losses:
            say(f"{len(log)} steps in {seconds:.0f} s ({len(log) * settings.batch * settings.block / seconds:,.0f}"
                f" tokens/s); training loss {losses[0]:.3f} -> {losses[-1]:.3f}\n  {sparkline(losses, 60)}")
        if interrupted:
            kept = conn.execute("SELECT max(step) FROM llm_param WHERE model = %s", [settings.model]).fetchone()[0]
            say(f"\ninterrupted: {len(log)} steps are logged in llm_train_log; the weights in llm_param are "
                f"those of step {kept} (written back every {SAVE_EVERY} steps).\n"
                f"  SELECT step, loss FROM llm_train_log WHERE model = '{settings.model}' ORDER BY id;")
            return 130

        section("6. after training")
        after = evaluate(conn, settings)
        _print_score(say, after, settings, before)
        _print_samples(say, starts, samples(conn, settings, starts))
        checkpoint = conn.execute("SELECT llm_checkpoint_save(%s, %s)",
                                  [settings.model, f"pg-llm-lab demo, {len(log)} steps"]).fetchone()[0]
        say(f"saved: SELECT llm_checkpoint_save('{settings.model}', ...);  -- checkpoint {checkpoint}")

    section("done")
    say(f"wall time {time.monotonic() - started:.0f} s; validation {after.nats_per_byte:.3f} nats/byte "
        f"(reference: {REFERENCE})")
    say("next:\n"
        f"  pg-llm-lab psql        then: SELECT llm_generate({_sql_text(starts[0])}, 40, model => "
        f"'{settings.model}');\n"
        "  pg-llm-lab lab         the notebooks in JupyterLab\n"
        f"                         SELECT * FROM llm_checkpoints;  SELECT llm_checkpoint_load('{settings.model}', "
        f"{checkpoint});")
    return 0


def _steps_for(conn, settings: Settings) -> int:
    """The steps that fit in settings.minutes, timed the way CALL llm_train runs them: a step
    (LONG_RUN_FACTOR for a long run), its share of the write-backs every SAVE_EVERY steps, and
    the call's own time once."""
    per_step, once = step_seconds(conn, settings)
    per_step = per_step * LONG_RUN_FACTOR + once / SAVE_EVERY
    return max(1, min(settings.steps, int((settings.minutes * 60 - once) / per_step)))


def step_seconds(conn, settings: Settings, steps: int = TIMING_STEPS) -> tuple[float, float]:
    """(seconds of a step inside one CALL llm_train, seconds a call spends once: loading
    the model, the last write-back, the round trip), from a short call on the model
    itself, then undone (llm_init with the same seed, its log rows deleted).  A step is
    the time between its row of llm_train_log and the one before (created_at), so it
    counts what every step of a run does (batch, forward, backward, AdamW, log, COMMIT)."""
    train_split, _ = _splits(settings)
    tick = time.monotonic()
    conn.execute("CALL llm_train(%s, %s, batch_size => %s, split => %s, notice_every => 0, save_every => %s)",
                 [settings.model, steps, settings.batch, train_split, SAVE_EVERY])
    call = time.monotonic() - tick
    first, last = conn.execute("SELECT extract(epoch FROM min(created_at)), extract(epoch FROM max(created_at)) "
                               "FROM (SELECT created_at FROM llm_train_log WHERE model = %s "
                               "ORDER BY id DESC LIMIT %s) AS call", [settings.model, steps]).fetchone()
    per_step = float(last - first) / (steps - 1)
    conn.execute("SELECT llm_init(%s::text, %s::int)", [settings.model, settings.seed])
    conn.execute("DELETE FROM llm_train_log WHERE model = %s", [settings.model])
    return per_step, max(0.0, call - steps * per_step)


def _print_score(say, score: Score, settings: Settings, before: Score | None = None) -> None:
    say(f"validation ({score.tokens:,} tokens, {score.bytes:,} bytes of '{_splits(settings)[1]}'): "
        f"{score.nats_per_token:.3f} nats/token, {score.nats_per_byte:.3f} nats/byte"
        + (f"  (before: {before.nats_per_token:.3f}, {before.nats_per_byte:.3f})" if before else
           f"  (uniform guess: ln {settings.vocab} = {math.log(settings.vocab):.3f} nats/token)"))


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _print_samples(say, starts: list[str], texts: list[str]) -> None:
    for prompt, text in zip(starts, texts):
        say(f"  {prompt!r} -> {(prompt + text)!r}")

