"""Plots of training, read straight from llm_train_log.

    fig = loss_curve(conn, "lab")              # the model's whole log, loss and learning rate
    rows = live_loss(conn, "lab", every=1.0)   # watch a run another session is making
    fig = tape_graph(conn)                     # this session's autograd tape as a graph
    fig = next_token_bars(conn, "lab", "ROMEO:", temperature=0.8)   # what the next token may be
    fig = class_curves(class_log(conn))        # every model trained in the last hour, side by side

`CALL llm_train` commits a row of llm_train_log after every step, so a
second session -- another notebook, psql -- sees the run as it goes.
live_loss polls for the model's new rows, redraws one figure in place (a
display that updates in Jupyter), and returns once that model's run is over
(another learner's run never keeps it waiting), or after a timeout.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable

import pandas as pd

LOG_COLUMNS = ["id", "step", "loss", "lr", "grad_norm"]
LOG_QUERY = ("SELECT id, step, loss, lr, grad_norm FROM llm_train_log "
             "WHERE model = %s AND id > %s ORDER BY id")
# Another session is inside CALL llm_train for this model: its query names the model as a
# literal, or passes its arguments as bound parameters ($1 ...: which model is then invisible,
# and live_loss falls back on the rows it sees coming).
TRAINING_QUERY = ("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                  "AND state = 'active' AND query ~* '^\\s*call\\s+(\\S+\\.)?llm_train\\s*\\(' "
                  "AND (strpos(query, quote_literal(%s::text)) > 0 OR query ~ '\\$1'))")


def train_log(conn, model: str, since: int = 0) -> pd.DataFrame:
    """llm_train_log rows of `model` with id > since: id, step, loss, lr, grad_norm."""
    return pd.DataFrame(conn.execute(LOG_QUERY, [model, since]).fetchall(), columns=LOG_COLUMNS)


def draw(log: pd.DataFrame, model: str, fig=None):
    """Loss over steps (left) and the learning rate (right) of a log, into fig (or a new figure)."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig, _ = plt.subplots(1, 2, figsize=(10, 3))
        plt.close(fig)        # shown by whoever displays it, not again by the inline backend
    loss_ax, lr_ax = fig.axes
    for ax in fig.axes:
        ax.clear()
    x = range(1, len(log) + 1)  # a step number repeats after a checkpoint load: plot in log order
    loss_ax.plot(x, log["loss"], lw=1)
    loss_ax.set_xlabel("optimizer step (this model's log)")
    loss_ax.set_ylabel("loss (nats per token)")
    last = f", last {log['loss'].iloc[-1]:.3f}" if len(log) else ""
    loss_ax.set_title(f"{model}: {len(log)} steps{last}")
    lr_ax.plot(x, log["lr"], lw=1, color="tab:orange")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.set_ylabel("learning rate")
    fig.tight_layout()
    return fig


def loss_curve(conn, model: str, *, since: int = 0, path=None):
    """A figure of the model's training log (rows with id > since); saved to path if given."""
    fig = draw(train_log(conn, model, since), model)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def is_training(conn, model: str) -> bool:
    """Is another session running CALL llm_train for `model` now (or one whose model it cannot see)?"""
    return conn.execute(TRAINING_QUERY, [model]).fetchone()[0]


def live_loss(conn, model: str, *, every: float = 1.0, since: int | None = None, wait: float = 30.0,
              idle: float = 30.0, timeout: float = 600.0, display: bool = True,
              on_rows: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """Watch `model` train: poll llm_train_log every `every` seconds and redraw.

    Rows of `model` with id > since count (default: those logged from now
    on); other models' runs are never waited for.  Returns all rows seen once
    the run is over -- no session runs llm_train for `model` and the last poll
    brought nothing new, or no new row came for `idle` seconds -- or after
    `timeout` seconds; if no run has started after `wait` seconds, returns
    what it has (maybe nothing).  conn should be an autocommit connection
    (pg_llm_lab.connect() gives one): each poll then sees the rows committed
    since the last.  on_rows(new_rows) is called after each poll that brought rows.
    """
    if since is None:
        since = conn.execute("SELECT coalesce(max(id), 0) FROM llm_train_log").fetchone()[0]
    log = pd.DataFrame(columns=LOG_COLUMNS)
    fig = handle = None
    start = last_row = time.monotonic()
    while True:
        running = is_training(conn, model)   # before reading: the rows of a run that just ended are in
        new = train_log(conn, model, since)
        now = time.monotonic()
        if len(new):
            since = int(new["id"].iloc[-1])
            last_row = now
            log = new if log.empty else pd.concat([log, new], ignore_index=True)
            if on_rows is not None:
                on_rows(new)
            if display:
                fig = draw(log, model, fig)
                handle = _show(fig, handle)
        started = running or not log.empty
        if started and not len(new) and (not running or (not log.empty and now - last_row > idle)):
            return log
        if (not started and now - start > wait) or now - start > timeout:
            return log
        time.sleep(every)


def _show(fig, handle):
    """Display fig, or replace what handle displayed with it (Jupyter updates the output in place)."""
    from IPython.display import display

    if handle is None:
        return display(fig, display_id=True)
    handle.update(fig)
    return handle


# ---- the autograd tape as a graph (notebooks 05, 06) ---------------------------------------

GRAPH_OPS = "SELECT id, op, inputs, output FROM llm_tape ORDER BY id"
GRAPH_TENSORS = "SELECT id, param_name, produced_by FROM llm_tensor_rt"


def tape_graph(conn, *, leaves: bool = True, highlight: int | None = None, ax=None):
    """This session's tape drawn as a graph: a box per llm_tape row, an arrow per input.

    Ops go down the page by depth (an op sits one row below the deepest op
    it reads); an arrow that skips rows -- a residual connection -- bends to
    the side; an input read twice by one op is one arrow marked ×2.  Inputs
    that no op produced (leaves: weights, data) are listed in grey beside
    their reader, by param_name, if `leaves`.  `highlight`
    (an llm_tape.id) is drawn in colour.
    """
    import matplotlib.pyplot as plt

    ops = conn.execute(GRAPH_OPS).fetchall()
    names = {tid: name for tid, name, _ in conn.execute(GRAPH_TENSORS).fetchall()}
    if not ops:
        raise ValueError("the tape is empty: record with SELECT llm_autograd_mode('full') and run some ops")
    producer = {output: op_id for op_id, _, _, output in ops}
    depth, rows, where = {}, {}, {}
    for op_id, _, inputs, _ in ops:
        depth[op_id] = 1 + max([depth[producer[t]] for t in inputs if t in producer], default=0)
        row = rows.setdefault(depth[op_id], [])
        where[op_id] = (2.6 * len(row), -depth[op_id])
        row.append(op_id)
    width = max(len(row) for row in rows.values())
    if ax is None:
        fig, ax = plt.subplots(figsize=(2.5 + 2.6 * width + (2.2 if leaves else 0), 0.8 + 0.42 * len(rows)))
        plt.close(fig)       # shown by whoever displays it
    box = dict(boxstyle="round,pad=0.3", fc="#dde6f0", ec="#4a6f96")
    chosen = dict(box, fc="tab:blue", ec="tab:blue")
    for op_id, op, inputs, _ in ops:
        x, y = where[op_id]
        for tensor_id in dict.fromkeys(inputs):          # once per tensor, however often it is read
            if tensor_id not in producer:
                continue
            (px, py), skipped = where[producer[tensor_id]], depth[op_id] - depth[producer[tensor_id]]
            bend = 0 if skipped == 1 and px == x else -0.25 - 0.03 * skipped
            ax.annotate("", xy=(x, y + 0.2), xytext=(px, py - 0.2),
                        arrowprops=dict(arrowstyle="->", color="gray", lw=0.8,
                                        connectionstyle=f"arc3,rad={bend}"))
            if inputs.count(tensor_id) > 1:
                ax.text((x + px) / 2 + 0.15, (y + py) / 2, f"×{inputs.count(tensor_id)}", fontsize=7, color="gray")
        ax.text(x, y, f"{op_id} {op.removeprefix('llm_')}", ha="center", va="center", fontsize=8,
                bbox=chosen if op_id == highlight else box, color="white" if op_id == highlight else "black")
        read = [names.get(t) or f"#{t}" for t in inputs if t not in producer]
        if leaves and read:
            ax.text(x + 1.0, y, "← " + ", ".join(read), ha="left", va="center", fontsize=6.5, color="dimgray")
    ax.set_xlim(-1.6, 2.6 * width + (2.4 if leaves else 0))
    ax.set_ylim(-len(rows) - 0.6, -0.4)
    ax.axis("off")
    ax.set_title(f"the tape: {len(ops)} ops (boxes), their inputs (arrows, and in grey the leaves)", fontsize=10)
    return ax.figure


# ---- the learning path's pictures: the next token, the class at a glance -------------------

def token_label(text: str) -> str:
    """A decoded token as a bar's label: spaces and newlines made visible."""
    return repr(text)[1:-1].replace(" ", "␣") or "∅"


def next_token_bars(conn, model: str, prompt: str, *, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, n: int = 15, fig=None):
    """The model's next token after `prompt`: the n likeliest tokens (llm_logits), labelled
    by their text (llm_decode), grey for their probability at temperature 1, blue for the
    probability they are drawn with under the settings (llm_sampling_probs)."""
    ids = conn.execute("SELECT llm_encode(%s, %s)", [prompt, model]).fetchone()[0]
    logits = conn.execute("SELECT llm_logits(%s, %s, true)", [model, ids]).fetchone()[0][0]
    plain, drawn = conn.execute("SELECT llm_sampling_probs(%(l)s, 1.0, 0, 1.0), "
                                "llm_sampling_probs(%(l)s, %(t)s, %(k)s, %(p)s)",
                                dict(l=logits, t=temperature, k=top_k, p=top_p)).fetchone()
    top = [int(i) for i in plain.argsort()[::-1][:n]]
    texts = dict(conn.execute("SELECT id, llm_decode(ARRAY[id], %s) FROM unnest(%s::int[]) AS id",
                              [model, top]).fetchall())
    ax = _fresh_axes(fig, (10, 3.2))
    x = range(len(top))
    ax.bar(x, plain[top], color="lightgray", label="temperature 1, all tokens")
    ax.bar(x, drawn[top], width=0.5, color="tab:blue", label="drawn with these settings")
    ax.set_xticks(list(x), [token_label(texts[i]) for i in top], rotation=45, ha="right", fontsize=9)
    ax.set_ylabel("probability")
    kept = int((drawn > 0).sum())
    ax.set_title(f"next token after {prompt!r}: temperature {temperature:g}, top-k {top_k or 'off'}, "
                 f"top-p {top_p:g} -> {kept:,} of {len(drawn):,} tokens can be drawn", fontsize=10)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def _fresh_axes(fig, size):
    """One empty axes filling fig, or a new figure of `size` (a thread draws into a
    Figure of its own: pyplot is not thread-safe)."""
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=size)
        plt.close(fig)        # shown by whoever displays it, not again by the inline backend
    fig.clear()
    return fig.subplots()


COLORS = [f"C{i}" for i in range(10)]     # matplotlib's default cycle, one color per model
CLASS_LOG_QUERY = """
    SELECT l.model, l.id, l.step, l.loss, l.created_at
    FROM llm_train_log l
    WHERE l.created_at > now() - make_interval(mins => %s) AND l.loss IS NOT NULL
    ORDER BY l.model, l.id"""


def class_log(conn, minutes: float = 60) -> pd.DataFrame:
    """Every model's llm_train_log rows of the last `minutes`: model, id, step, loss, created_at."""
    return pd.DataFrame(conn.execute(CLASS_LOG_QUERY, [minutes]).fetchall(),
                        columns=["model", "id", "step", "loss", "created_at"])


def class_curves(log: pd.DataFrame, fig=None):
    """One loss curve per model, side by side on one axis, over the minutes of the log;
    a model's line breaks where its step number goes back (a new run, a checkpoint loaded)."""
    ax = _fresh_axes(fig, (10, 4))
    if log.empty:
        ax.text(0.5, 0.5, "no training logged in this window", ha="center", va="center")
    else:
        start = log["created_at"].min()
        for (model, rows), color in zip(log.groupby("model"), itertools.cycle(COLORS)):
            minutes = (rows["created_at"] - start).dt.total_seconds() / 60
            runs = (rows["step"].diff() <= 0).cumsum()
            label = f"{model} (step {rows['step'].iloc[-1]})"
            for _, run in rows.groupby(runs):
                ax.plot(minutes[run.index], run["loss"], lw=1, color=color, label=label)
                label = None
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("minutes")
    ax.set_ylabel("training loss (nats per token)")
    ax.set_title(f"the class: {log['model'].nunique()} models")
    ax.figure.tight_layout()
    return ax.figure
