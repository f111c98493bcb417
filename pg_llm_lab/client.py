"""PGLLMClient: text generation in the database, from Python.

    import psycopg
import psycopg.sql
    from pg_llm_client import PGLLMClient      # or: from pg_llm_lab import PGLLMClient

    with psycopg.connect(url) as conn:
        client = PGLLMClient(conn)
        print(client.generate("The database that dreamed of language", temperature=0.7))
        for event in client.stream("Streaming from SQL", max_tokens=8):
            print(event.token, end="", flush=True)           # as each token is made
        for beam in client.beam_search("Once upon a", beam_width=3, max_tokens=5):
            print(beam.score, beam.text)

Every call is one SQL function (llm_generate, llm_generate_stream,
llm_beam_search, llm_encode, llm_decode; train() is CALL llm_train) with its arguments bound as
parameters, never formatted into the SQL.  stream() reads
llm_generate_stream through a server-side cursor, one FETCH per token, so
events arrive while the model still runs.  With model=None the server's
setting pg_llm.default_model decides.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg

_GENERATE = (
    "SELECT llm_generate(%s::text, %s::int, %s::float8, %s::int, %s::float8, model => %s::text,"
    " seed => %s::bigint, stop => %s::text[], stop_ids => %s::int[], repetition_penalty => %s::float8)"
)
# The function in the select list, read through a cursor: rows leave one
# FETCH at a time (in FROM they would all come at the end).  The subquery
# calls it once; (llm_generate_stream(...)).* would call it once per column.
_STREAM = (
    "SELECT (r).* FROM (SELECT llm_generate_stream(%s::text, %s::int, %s::float8, %s::int, %s::float8,"
    " model => %s::text, seed => %s::bigint, stop => %s::text[], stop_ids => %s::int[],"
    " repetition_penalty => %s::float8) AS r) AS s"
)
_BEAM_SEARCH = (
    "SELECT rank, score, tokens, text FROM llm_beam_search(%s::text, %s::int, %s::int, %s::text,"
    " %s::float8, %s::text, %s::int[], %s::int, %s::float8)"
)

_cursor_names = itertools.count(1)


# llm_train's settings after (model, steps), with their SQL types (sql/82_train_step.sql).
_TRAIN_SETTINGS = {
    "batch_size": "int", "lr": "float8", "warmup": "int", "min_lr": "float8", "weight_decay": "float8",
    "clip": "float8", "seed": "bigint", "grad_workers": "int", "prune_workers": "int", "n_layer": "int",
    "n_head": "int", "d": "int", "vocab": "int", "save_every": "int", "beta1": "float8", "beta2": "float8",
    "eps": "float8", "decay_steps": "int", "notice_every": "int", "split": "text",
}
# llm_train's NOTICE: 'llm_train "m": step 12 (3 of 10), loss 4.123456'
_TRAIN_NOTICE = re.compile(r"\((?P<done>\d+) of \d+\), loss (?P<loss>\S+?)(,|$)")

@dataclass(frozen=True)
class StreamEvent:
    """One row of llm_generate_stream: the step-th token and the text it adds."""
    step: int
    token_id: int
    token: str        # the text this token adds ('' while a character is split)
    text: str         # all the text so far
    is_complete: bool  # the last event


@dataclass(frozen=True)
class Beam:
    """One hypothesis of llm_beam_search, rank 1 the best."""
    rank: int
    score: float
    token_ids: list[int]
    text: str


class PGLLMClient:
    """Generation, beam search and the tokenizer of pg_llm over a psycopg 3 connection."""

    def __init__(self, conn: psycopg.Connection, model: str | None = None):
        self.conn = conn
        self.model = model

    def _model(self, model: str | None) -> str | None:
        return model if model is not None else self.model

    def _model_name(self, model: str | None) -> str:
        """The model, or the server's pg_llm.default_model (for the tokenizer functions)."""
        model = self._model(model)
        if model is None:
            model = self.conn.execute("SELECT llm_default_model()").fetchone()[0]
        return model

    def _sampling(self, prompt, max_tokens, temperature, top_k, top_p, model, seed, stop, stop_ids,
                  repetition_penalty):
        if isinstance(stop, str):
            stop = [stop]
        return (prompt, max_tokens, temperature, top_k, top_p, self._model(model), seed,
                None if stop is None else list(stop), None if stop_ids is None else list(stop_ids),
                repetition_penalty)

    def generate(self, prompt: str, max_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, *, model: str | None = None, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, stop_ids: Sequence[int] | None = None,
                 repetition_penalty: float = 1.0) -> str:
        """The text the model writes after prompt (llm_generate)."""
        params = self._sampling(prompt, max_tokens, temperature, top_k, top_p, model, seed, stop, stop_ids,
                                repetition_penalty)
        return self.conn.execute(_GENERATE, params).fetchone()[0]

    def stream(self, prompt: str, max_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, *, model: str | None = None, seed: int | None = None,
               stop: str | Sequence[str] | None = None, stop_ids: Sequence[int] | None = None,
               repetition_penalty: float = 1.0) -> Iterator[StreamEvent]:
        """StreamEvents, each as soon as the server has made its token.

        Runs in a transaction of its own (a savepoint inside the caller's);
        leaving the loop early closes the cursor and stops the generation.
        """
        params = self._sampling(prompt, max_tokens, temperature, top_k, top_p, model, seed, stop, stop_ids,
                                repetition_penalty)
        with self.conn.transaction():
            with self.conn.cursor(name=f"pg_llm_stream_{next(_cursor_names)}", scrollable=False) as cur:
                cur.itersize = 1  # one FETCH per row: nothing waits in a batch
                cur.execute(_STREAM, params)
                for row in cur:
                    yield StreamEvent(*row)

    def beam_search(self, prompt: str, beam_width: int, max_tokens: int, *, model: str | None = None,
                    length_penalty: float = 1.0, early_stopping: bool | str = False,
                    stop_ids: Sequence[int] | None = None, num_return: int | None = None,
                    repetition_penalty: float = 1.0) -> list[Beam]:
        """The best hypotheses, best first (llm_beam_search; HF's semantics)."""
        params = (prompt, beam_width, max_tokens, self._model(model), length_penalty,
                  str(early_stopping).lower(), None if stop_ids is None else list(stop_ids), num_return,
                  repetition_penalty)
        return [Beam(*row) for row in self.conn.execute(_BEAM_SEARCH, params).fetchall()]

    def encode(self, text: str, model: str | None = None, allow_special: bool = False) -> list[int]:
        """Token ids of text (llm_encode): <|endoftext|> written in it is its id only with allow_special."""
        return self.conn.execute("SELECT llm_encode(%s::text, %s::text, %s::boolean)",
                                 (text, self._model_name(model), allow_special)).fetchone()[0]

    def decode(self, ids: Sequence[int], model: str | None = None) -> str:
        """The text of token ids (llm_decode)."""
        return self.conn.execute("SELECT llm_decode(%s::int[], %s::text)",
                                 (list(ids), self._model_name(model))).fetchone()[0]

    def train(self, steps: int, *, model: str | None = None, progress: bool = True,
              **settings) -> list[tuple]:
        """CALL llm_train(model, steps, ...): `steps` AdamW steps on batches of
        llm_dataset, settings by name as llm_train takes them (batch_size, lr,
        warmup, min_lr, weight_decay, clip, seed, save_every, ...).  The
        procedure commits every step and sends a NOTICE; each moves a progress
        bar.  Returns this run's rows of llm_train_log as (step, loss, lr,
        grad_norm).  Needs an autocommit connection (pg_llm_lab.connect()
        gives one): a CALL inside a transaction block cannot commit."""
        unknown = sorted(set(settings) - set(_TRAIN_SETTINGS))
        if unknown:
            raise TypeError(f"llm_train has no setting {', '.join(unknown)}; it takes {', '.join(_TRAIN_SETTINGS)}")
        if not self.conn.autocommit:
            raise RuntimeError("llm_train commits after every step: use an autocommit connection")
        name = self._model(model) or self.conn.execute("SELECT llm_default_model()").fetchone()[0]
        since = self.conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
        call = psycopg.sql.SQL("CALL llm_train(%s::text, %s::int{})").format(psycopg.sql.SQL("").join(
            psycopg.sql.SQL(", {} => %s::" + _TRAIN_SETTINGS[key]).format(psycopg.sql.Identifier(key))
            for key in settings))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc=f"training {name}", unit="step")

        def on_notice(diag):
            done = _TRAIN_NOTICE.search(diag.message_primary or "")
            if bar is not None and done:
                bar.update(int(done["done"]) - bar.n)
                bar.set_postfix(loss=done["loss"])

        self.conn.add_notice_handler(on_notice)
        try:
            self.conn.execute(call, [name, steps, *settings.values()])
        finally:
            self.conn.remove_notice_handler(on_notice)
            if bar is not None:
                bar.close()
        return self.conn.execute("SELECT step, loss, lr, grad_norm FROM llm_train_log "
                                 "WHERE model = %s AND id > %s ORDER BY id", [name, since]).fetchall()
