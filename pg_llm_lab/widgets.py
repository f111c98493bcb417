"""Widgets for the notebooks.

TapeStepper steps through the autograd tape (llm_tape joined with
llm_tensor_rt) one op at a time: filters keep one kind of op or one layer of
GPT-2, a play button and a slider pick the op, and the panel shows its
inputs, its output, their values and gradients -- and, when given, reference
gradients (e.g. from PyTorch) beside pg_llm's -- with a heatmap of the
output's value and gradient.

    stepper = TapeStepper(conn)           # conn: pg_llm_lab.connect()
    stepper.widget                        # display it in Jupyter
    print(stepper.describe(3))            # op 3 of the tape, as text
    stepper.op_ids(layer="h.0")           # the ops of GPT-2's first block

SamplingPlayground generates text from a prompt with sliders for
temperature, top-k and top-p, a seed and a regenerate button (llm_generate),
above bars of the next token's probabilities under those settings.

    playground = SamplingPlayground(conn, "ROMEO:", model="alice_gpt")
    playground.widget
    playground.generate()                 # the text for the current settings
"""
from __future__ import annotations

import html

import numpy as np

TAPE_QUERY = "SELECT id, op, inputs, output, shape, attrs FROM llm_tape ORDER BY id"
TENSOR_QUERY = "SELECT id, shape, data, grad, param_name, produced_by FROM llm_tensor_rt ORDER BY id"
ALL = "all"


def _summary(values: np.ndarray | None, limit: int = 6) -> str:
    if values is None:
        return "-"
    flat = np.asarray(values).ravel()
    head = ", ".join(f"{v:.4g}" for v in flat[:limit])
    more = ", ..." if flat.size > limit else ""
    return f"[{head}{more}] (|max| {np.abs(flat).max():.3g})"


def param_layer(param_name: str | None) -> tuple[int, str] | None:
    """Where a GPT-2 parameter sits, as (order, name): wte/wpe -> (0, 'embeddings'),
    h.3.* -> (4, 'h.3'), ln_f -> (big, 'head'); None for a tensor that is no parameter."""
    if not param_name:
        return None
    if param_name.startswith("h."):
        n = int(param_name.split(".")[1])
        return n + 1, f"h.{n}"
    if param_name.startswith(("wte.", "wpe.")):
        return 0, "embeddings"
    if param_name.startswith("ln_f."):
        return 10**6, "head"
    return None


def op_layers(ops, tensors) -> list[str]:
    """The part of GPT-2 each op of the tape belongs to ('embeddings', 'h.0', ..., 'head').

    An op is in the deepest layer of the parameters it reads, and never before
    the op recorded ahead of it: the residual adds and the attention read no
    parameter and stay in their block, the tied lm_head reads wte after ln_f
    and stays in the head.  A tape with no GPT-2 parameters gets '' throughout.
    """
    layers, current = [], (-1, "")
    for _, _, inputs, _, _, _ in ops:
        read = [param_layer(tensors[t][4]) for t in inputs if t in tensors]
        current = max([current] + [layer for layer in read if layer])
        layers.append(current[1])
    return layers


class TapeStepper:
    """Step through this session's tape (read once, at creation), op by op.

    Filters pick the ops of one kind (`op`, e.g. 'llm_attention_qkv') or of
    one layer of GPT-2 (`layer`: 'embeddings', 'h.0', ..., 'head'); the slider
    runs over the ops they keep.  The panel shows the op's inputs and output,
    their values and gradients (values need mode full, gradients
    llm_backprop()), and, when given, reference gradients beside them;
    output_figure(op_id) draws the output's value and gradient.
    """

    def __init__(self, conn, reference_grads: dict[int, np.ndarray] | None = None,
                 reference_name: str = "torch"):
        self.ops = conn.execute(TAPE_QUERY).fetchall()
        self.tensors = {row[0]: row for row in conn.execute(TENSOR_QUERY).fetchall()}
        self.reference = reference_grads or {}
        self.reference_name = reference_name
        if not self.ops:
            raise ValueError("the tape is empty: record with SELECT llm_autograd_mode('full') and run some ops")
        self.layers = op_layers(self.ops, self.tensors)
        self._widget = None

    def op_ids(self, op: str = ALL, layer: str = ALL) -> list[int]:
        """The llm_tape ids of the ops kept by the filters ('all' keeps every one)."""
        return [row[0] for row, in_layer in zip(self.ops, self.layers)
                if op in (ALL, row[1]) and layer in (ALL, in_layer)]

    def _tensor_line(self, role: str, tensor_id: int) -> str:
        _, shape, data, grad, param_name, _ = self.tensors[tensor_id]
        name = f" '{param_name}'" if param_name else ""
        lines = [f"  {role} #{tensor_id}{name} shape {shape}",
                 f"      value {_summary(data)}",
                 f"      grad  {_summary(grad)}"]
        if tensor_id in self.reference and grad is not None:
            ref = np.asarray(self.reference[tensor_id])
            lines.append(f"      {self.reference_name:5} {_summary(ref)}  max |diff| "
                         f"{np.abs(np.asarray(grad) - ref).max():.2e}")
        return "\n".join(lines)

    def describe(self, op_id: int) -> str:
        """The op with llm_tape.id op_id (1 is the first) as text."""
        _, op, inputs, output, shape, attrs = self.ops[op_id - 1]
        layer = f"  [{self.layers[op_id - 1]}]" if self.layers[op_id - 1] else ""
        lines = [f"op {op_id}/{len(self.ops)}: {op}{layer}  {attrs or ''}"]
        lines += [self._tensor_line(f"in{i}", tid) for i, tid in enumerate(inputs)]
        lines.append(self._tensor_line("out", output))
        return "\n".join(lines)

    def figure(self, op_id: int):
        """A matplotlib picture of the stepper at op op_id: the ops as a strip, that
        one highlighted, and its panel below (for documents, where no widget runs)."""
        import matplotlib.pyplot as plt

        text = self.describe(op_id)
        fig = plt.figure(figsize=(10, 1.2 + 0.19 * text.count("\n")))
        strip = fig.add_axes([0.02, 1 - 0.9 / fig.get_figheight(), 0.96, 0.6 / fig.get_figheight()])
        for i, row in enumerate(self.ops):
            chosen = i + 1 == op_id
            strip.add_patch(plt.Rectangle((i, 0), 0.92, 1, color="tab:blue" if chosen else "#dde6f0"))
            strip.text(i + 0.46, 0.5, row[1].removeprefix("llm_"), ha="center", va="center", fontsize=8,
                       color="white" if chosen else "black")
        strip.set_xlim(0, len(self.ops))
        strip.set_ylim(0, 1)
        strip.axis("off")
        fig.text(0.02, 1 - 1.1 / fig.get_figheight(), text, family="monospace", fontsize=9, va="top")
        plt.close(fig)
        return fig

    def output_figure(self, op_id: int):
        """The output of op op_id: its value and its gradient as heatmaps (a vector as one row)."""
        import matplotlib.pyplot as plt

        _, op, _, output, _, _ = self.ops[op_id - 1]
        _, _, data, grad, _, _ = self.tensors[output]
        fig, axes = plt.subplots(1, 2, figsize=(10, 2.6))
        for ax, values, what in zip(axes, (data, grad), ("value", "gradient")):
            if values is None:
                ax.text(0.5, 0.5, f"no {what} recorded", ha="center", va="center")
                ax.axis("off")
                continue
            matrix = np.atleast_2d(np.asarray(values))
            limit = float(np.abs(matrix).max()) or 1.0
            image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                              interpolation="nearest")
            fig.colorbar(image, ax=ax)
            ax.set_title(f"op {op_id} {op}: output {what} {list(np.shape(values))}", fontsize=9)
        fig.tight_layout()
        plt.close(fig)
        return fig

    @property
    def widget(self):
        """Filters (op, layer), a play button and a slider over the ops they keep, and a
        panel describing the chosen op with a picture of its output's value and gradient."""
        if self._widget is None:
            import ipywidgets as widgets
            from IPython.display import display

            ops = sorted({row[1] for row in self.ops})
            layers = list(dict.fromkeys(layer for layer in self.layers if layer))
            self.op_filter = widgets.Dropdown(options=[ALL] + ops, value=ALL, description="op")
            self.layer_filter = widgets.Dropdown(options=[ALL] + layers, value=ALL, description="layer",
                                                 disabled=not layers)
            self.slider = widgets.IntSlider(value=1, min=1, max=len(self.ops), description="op no.",
                                            continuous_update=False)
            self.play = widgets.Play(value=1, min=1, max=len(self.ops), interval=1000,
                                     description="play the tape")
            widgets.jslink((self.play, "value"), (self.slider, "value"))
            self.panel = widgets.HTML()
            self.picture = widgets.Output()

            def chosen() -> list[int]:
                return self.op_ids(self.op_filter.value, self.layer_filter.value)

            def show(change=None):
                kept = chosen()
                if not kept:
                    self.panel.value = "<pre>no op of the tape passes these filters</pre>"
                    self.picture.clear_output()
                    return
                op_id = kept[min(self.slider.value, len(kept)) - 1]
                self.panel.value = (f"<pre>{len(kept)} of {len(self.ops)} ops shown\n"
                                    f"{html.escape(self.describe(op_id))}</pre>")
                self.picture.clear_output(wait=True)
                with self.picture:
                    display(self.output_figure(op_id))

            def refilter(change=None):
                n = max(len(chosen()), 1)
                self.slider.value = self.play.value = 1
                self.slider.max = self.play.max = n
                show()

            self.slider.observe(show, names="value")
            self.op_filter.observe(refilter, names="value")
            self.layer_filter.observe(refilter, names="value")
            show()
            self._widget = widgets.VBox([widgets.HBox([self.op_filter, self.layer_filter]),
                                         widgets.HBox([self.play, self.slider]), self.panel, self.picture])
        return self._widget


def _png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (for an ipywidgets Image)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


class SamplingPlayground:
    """Sliders for temperature, top-k, top-p and a seed over llm_generate.

    Moving a control or pressing "regenerate" writes a new sample; with the
    same settings and seed the text is the same (llm_generate is seeded).
    Below it, the next token after the prompt: the likeliest tokens, labelled
    by their text, with the probabilities they are drawn with under the
    settings (plots.next_token_bars), redrawn as the controls move.
    """

    def __init__(self, conn, prompt: str, *, model: str | None = None, max_tokens: int = 40,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0):
        import ipywidgets as widgets

        from .client import PGLLMClient

        self.conn = conn
        self.client = PGLLMClient(conn, model)
        self.model = model or conn.execute("SELECT llm_default_model()").fetchone()[0]
        self.max_tokens = max_tokens
        style = {"description_width": "90px"}
        self.prompt = widgets.Text(value=prompt, description="prompt", style=style)
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05,
                                               description="temperature", continuous_update=False,
                                               style=style)
        self.top_k = widgets.IntSlider(value=top_k, min=0, max=100, description="top-k (0: all)",
                                       continuous_update=False, style=style)
        self.top_p = widgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p",
                                         continuous_update=False, style=style)
        self.seed = widgets.IntText(value=seed, description="seed", style=style)
        self.button = widgets.Button(description="regenerate", tooltip="a new seed, a new sample")
        self.output = widgets.HTML()
        self.bars = widgets.Image(format="png")
        self._figure = None
        for control in (self.prompt, self.temperature, self.top_k, self.top_p, self.seed):
            control.observe(lambda change: self.show(), names="value")
        self.button.on_click(lambda button: self.regenerate())
        self.widget = widgets.VBox([self.prompt, self.temperature, self.top_k, self.top_p,
                                    widgets.HBox([self.seed, self.button]), self.output, self.bars])
        self.show()

    def settings(self) -> dict:
        """The generation settings the controls show now."""
        return dict(temperature=self.temperature.value, top_k=self.top_k.value, top_p=self.top_p.value,
                    seed=self.seed.value)

    def generate(self) -> str:
        """The text llm_generate writes after the prompt with the current settings."""
        return self.client.generate(self.prompt.value, self.max_tokens, **self.settings())

    def show(self) -> str:
        """Generate with the current settings into the output panel and redraw the
        next token's bars; returns the text."""
        from . import plots

        self.text = self.generate()
        self.output.value = (f"<pre style='white-space: pre-wrap'><b>{html.escape(self.prompt.value)}</b>"
                             f"{html.escape(self.text)}</pre>")
        settings = self.settings()
        del settings["seed"]
        self._figure = plots.next_token_bars(self.conn, self.model, self.prompt.value, fig=self._figure,
                                             **settings)
        self.bars.value = _png(self._figure)
        return self.text

    def regenerate(self) -> str:
        """The next seed (the button): a new sample with the same settings; returns it."""
        self.seed.value += 1      # observed: show() runs
        return self.text


# ---- the learning path: a run watched live, the class at a glance ------------------------

class TrainingWatcher:
    """Follows one model's `CALL llm_train` from a session and a thread of its own.

    Started before the CALL (which may run in a %%sql cell: this widget
    keeps drawing while that cell runs).  It polls llm_train_log for the
    model's new rows (plots.live_loss: other models' runs are ignored; it
    gives up after `wait` seconds if no run starts, and after `timeout` in
    all), redraws the loss, and each time the run writes its weights back to
    llm_param it saves a checkpoint of them and samples a line of text.

        watcher = TrainingWatcher("alice_gpt", prompt="ROMEO:")
        watcher.widget              # display it, then run the CALL
        log = watcher.join()        # the rows it saw, once the run is over
        watcher.samples             # [(step, checkpoint id, text), ...]
    """

    def __init__(self, model: str, prompt: str, *, url: str | None = None, every: float = 1.0,
                 wait: float = 120.0, timeout: float = 600.0, sample_tokens: int = 30):
        import threading

        import ipywidgets as widgets

        from . import db

        self.model, self.prompt, self.sample_tokens = model, prompt, sample_tokens
        self.every, self.wait, self.timeout = every, wait, timeout
        self.conn = db.connect(url)
        self.samples: list[tuple[int, int, str]] = []
        self.log = None
        self.error: BaseException | None = None
        self._written = self._written_step()
        self._figure = None
        self.image = widgets.Image(format="png")
        self.status = widgets.HTML(f"waiting for <code>CALL llm_train('{html.escape(model)}', ...)</code>"
                                   f" (up to {wait:.0f} s)")
        self.text = widgets.HTML(layout=widgets.Layout(max_height="16em", overflow="auto"))
        self.widget = widgets.VBox([self.status, self.image, self.text])
        self._thread = threading.Thread(target=self._follow, name=f"watch {model}", daemon=True)
        self._thread.start()

    def _written_step(self) -> int:
        return self.conn.execute("SELECT coalesce(max(step), 0) FROM llm_param WHERE model = %s",
                                 [self.model]).fetchone()[0]

    def _follow(self) -> None:
        from . import plots

        try:
            self.log = plots.live_loss(self.conn, self.model, every=self.every, wait=self.wait,
                                       timeout=self.timeout, display=False, on_rows=self._on_rows)
            steps = len(self.log)
            if plots.is_training(self.conn, self.model):
                self.status.value = f"{self.model}: {steps} steps watched, then {self.timeout:.0f} s were up"
            elif steps:
                self.status.value = f"{self.model}: {steps} steps watched; the run is over"
            else:
                self.status.value = (f"no run of {html.escape(self.model)} started in {self.wait:.0f} s: "
                                     "run this cell again to watch the next one")
        except BaseException as error:      # shown in the widget: a thread's exception goes nowhere
            self.error = error
            self.status.value = f"the watcher stopped: {html.escape(repr(error))}"
        finally:
            self.conn.close()

    def _on_rows(self, new) -> None:
        import pandas as pd
        from matplotlib.figure import Figure

        from . import plots

        self.log = new if self.log is None else pd.concat([self.log, new], ignore_index=True)
        if self._figure is None:    # (not pyplot's: this runs in a thread of its own)
            self._figure = Figure(figsize=(10, 3))
            self._figure.subplots(1, 2)
        plots.draw(self.log, self.model, self._figure)
        self.image.value = _png(self._figure)
        last = self.log.iloc[-1]
        self.status.value = f"{self.model}: step {last['step']}, loss {last['loss']:.3f}"
        written = self._written_step()
        if written > self._written:
            self._written = written
            self._sample()

    def _sample(self) -> None:
        """A checkpoint of the weights last written back, and what they write after the prompt."""
        from .client import PGLLMClient

        saved = self.conn.execute("SELECT llm_checkpoint_save(%s, 'watched during training')",
                                  [self.model]).fetchone()[0]
        step = self.conn.execute("SELECT step FROM llm_checkpoint WHERE id = %s", [saved]).fetchone()[0]
        text = PGLLMClient(self.conn, self.model).generate(self.prompt, self.sample_tokens, temperature=0.8,
                                                           top_k=40, seed=1)
        self.samples.append((step, saved, text))
        self.text.value = "".join(     # the latest first
            f"<pre style='white-space: pre-wrap'><b>step {s} (checkpoint {c}):</b> "
            f"{html.escape(self.prompt + t)}</pre>" for s, c, t in reversed(self.samples))

    def join(self, timeout: float | None = None):
        """Wait for the watcher to finish (the run is over); the log rows it saw."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.log


TRAINING_NOW_QUERY = """
    SELECT pid, usename, now() - query_start AS running_for, left(query, 120) AS query
    FROM pg_stat_activity
    WHERE state = 'active' AND query ~* '^\\s*call\\s+(\\S+\\.)?llm_train\\s*\\('
    ORDER BY query_start"""


def training_now(conn) -> list[tuple]:
    """The sessions inside CALL llm_train now: (pid, role, running for, the CALL's text)."""
    return conn.execute(TRAINING_NOW_QUERY).fetchall()


class ClassView:
    """The class at a glance, redrawn every `every` seconds for `duration` seconds
    from a session and a thread of its own: one loss curve per model trained in the
    last `minutes` (llm_train_log) and the sessions training now (pg_stat_activity).
    It only reads.

        view = ClassView(minutes=60)
        view.widget
    """

    def __init__(self, *, url: str | None = None, minutes: float = 60, every: float = 5.0,
                 duration: float = 600.0):
        import threading

        import ipywidgets as widgets

        from . import db

        self.minutes, self.every, self.duration = minutes, every, duration
        self.conn = db.connect(url)
        self.refreshes = 0
        self._figure = None
        self._stop = threading.Event()
        self.image = widgets.Image(format="png")
        self.status = widgets.HTML()
        self.button = widgets.Button(description="stop", tooltip="stop refreshing")
        self.button.on_click(lambda button: self.stop())
        self.widget = widgets.VBox([widgets.HBox([self.button, self.status]), self.image])
        self._thread = threading.Thread(target=self._follow, name="class view", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        """Read the log and the sessions once, and redraw."""
        import time

        from matplotlib.figure import Figure

        from . import plots

        log = plots.class_log(self.conn, self.minutes)
        self._figure = plots.class_curves(log, self._figure or Figure(figsize=(10, 4)))
        self.image.value = _png(self._figure)
        rows = "".join(f"<li><code>{html.escape(query)}</code> ({html.escape(role)}, pid {pid}, "
                       f"{running.total_seconds():.0f} s)</li>" for pid, role, running, query in training_now(self.conn))
        self.status.value = (f"{time.strftime('%H:%M:%S')}: training now: " + (f"<ul>{rows}</ul>" if rows else "nobody"))
        self.refreshes += 1

    def _follow(self) -> None:
        import time

        until = time.monotonic() + self.duration
        try:
            while True:
                self.refresh()
                if self._stop.wait(self.every) or time.monotonic() > until:
                    break
        except BaseException as error:      # shown in the widget: a thread's exception goes nowhere
            self.status.value = f"the view stopped: {html.escape(repr(error))}"
        finally:
            self.conn.close()

    def stop(self) -> None:
        """Stop refreshing (the button)."""
        self._stop.set()
        self._thread.join(timeout=30)
