"""PGLLMClient: text generation in the database, from Python.

    import psycopg
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

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
import psycopg.conninfo
import psycopg.sql

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


# llm_train's arguments and their SQL types, in order, as the catalog has them.
_TRAIN_ARGUMENTS = (
    "SELECT a.name, format_type(a.type, NULL) FROM pg_proc p"
    " JOIN pg_extension e ON e.extname = 'pg_llm' AND p.pronamespace = e.extnamespace,"
    " unnest(p.proargnames, p.proargtypes::oid[]) WITH ORDINALITY AS a(name, type, n)"
    " WHERE p.proname = 'llm_train' AND p.prokind = 'p' ORDER BY a.n"
)


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
              on_step: Callable[[int, float], None] | None = None, **settings) -> list[tuple]:
        """CALL llm_train(model, steps, ...): `steps` AdamW steps on batches of
        llm_dataset, settings by name as llm_train takes them (batch_size, lr,
        warmup, min_lr, weight_decay, clip, seed, save_every, ...).  The
        procedure commits a row of llm_train_log every step; a second
        connection reads them as they come, moves a progress bar and calls
        on_step(steps done, loss).  Returns this call's rows of llm_train_log as
        (step, loss, lr, grad_norm).  With run="name", a named run: called
        again after an interruption it goes on where the run stopped, and the
        bar and on_step count the run's steps.  Needs an autocommit connection
        (pg_llm_lab.connect() gives one): a CALL inside a transaction block
        cannot commit."""
        arguments = dict(self.conn.execute(_TRAIN_ARGUMENTS).fetchall())
        accepted = list(arguments)[2:]          # after model and steps
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise TypeError(f"llm_train has no setting {', '.join(unknown)}; it takes {', '.join(accepted)}")
        if not self.conn.autocommit:
            raise RuntimeError("llm_train commits after every step: use an autocommit connection")
        name = self._model(model) or self.conn.execute("SELECT llm_default_model()").fetchone()[0]
        since = self.conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
        done_before = self.conn.execute(   # the steps a named run has taken (0: a new run or none)
            "SELECT coalesce(max(p.step) - min(r.start_step), 0) FROM llm_train_run r "
            "JOIN llm_param p ON p.model = r.model WHERE r.model = %s AND r.run = %s",
            [name, settings.get("run")]).fetchone()[0]
        call = psycopg.sql.SQL("CALL llm_train(%s::text, %s::int{})").format(psycopg.sql.SQL("").join(
            psycopg.sql.SQL(", {} => %s::{}").format(psycopg.sql.Identifier(key), psycopg.sql.SQL(arguments[key]))
            for key in settings))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, initial=done_before, desc=f"training {name}", unit="step")

        def on_row(rows: int, loss: float) -> None:
            done = done_before + rows
            if bar is not None:
                bar.update(done - bar.n)
                bar.set_postfix(loss=f"{loss:.4f}")
            if on_step is not None:
                on_step(done, loss)

        try:
            with following_train_log(self.conn, name, since, on_row):
                self.conn.execute(call, [name, steps, *settings.values()])
        finally:
            if bar is not None:
                bar.close()
        return self.conn.execute("SELECT step, loss, lr, grad_norm FROM llm_train_log "
                                 "WHERE model = %s AND id > %s ORDER BY id", [name, since]).fetchall()


@contextlib.contextmanager
def following_train_log(conn: psycopg.Connection, model: str, since: int,
                        on_row: Callable[[int, float], None], interval: float = 0.2):
    """While inside, a thread reads the rows of llm_train_log of `model` after id
    `since` on a connection of its own (conn is busy with the CALL) and calls
    on_row(rows so far, loss) for each; the last rows are read after the block."""
    reader = psycopg.connect(psycopg.conninfo.make_conninfo(conn.info.dsn, password=conn.info.password),
                             autocommit=True)
    stop = threading.Event()
    seen = [since, 0]                          # last id, rows read

    def read_new_rows() -> None:
        rows = reader.execute("SELECT id, loss FROM llm_train_log WHERE model = %s AND id > %s ORDER BY id",
                              [model, seen[0]]).fetchall()
        for row_id, loss in rows:
            seen[0], seen[1] = row_id, seen[1] + 1
            on_row(seen[1], loss)

    def follow() -> None:
        while not stop.wait(interval):
            read_new_rows()
        read_new_rows()

    thread = threading.Thread(target=follow, name="llm_train_log", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        reader.close()
