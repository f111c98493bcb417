"""Widgets for the notebooks.

TapeStepper steps through the autograd tape (llm_tape joined with
llm_tensor_rt) one op at a time: a slider picks the op, and the panel shows
its inputs, its output and their gradients -- and, when given, reference
gradients (e.g. from PyTorch) beside pg_llm's.

    stepper = TapeStepper(conn)           # conn: pg_llm_lab.connect()
    stepper.widget                        # display it in Jupyter
    print(stepper.describe(3))            # the same panel as text
"""
from __future__ import annotations

import html

import numpy as np

TAPE_QUERY = """
    SELECT t.id, t.op, t.inputs, t.output, t.shape, t.attrs
    FROM llm_tape t ORDER BY t.id
"""
TENSOR_QUERY = "SELECT id, shape, data, grad, param_name, produced_by FROM llm_tensor_rt ORDER BY id"


def _summary(values: np.ndarray | None, limit: int = 6) -> str:
    if values is None:
        return "-"
    flat = np.asarray(values).ravel()
    head = ", ".join(f"{v:.4g}" for v in flat[:limit])
    more = ", ..." if flat.size > limit else ""
    return f"[{head}{more}] (|max| {np.abs(flat).max():.3g})"


class TapeStepper:
    """Step through the tape the database holds now (read once, at creation)."""

    def __init__(self, conn, reference_grads: dict[int, np.ndarray] | None = None,
                 reference_name: str = "torch"):
        self.ops = conn.execute(TAPE_QUERY).fetchall()
        self.tensors = {row[0]: row for row in conn.execute(TENSOR_QUERY).fetchall()}
        self.reference = reference_grads or {}
        self.reference_name = reference_name
        if not self.ops:
            raise ValueError("the tape is empty: record with SELECT llm_autograd_mode('full') and run some ops")
        self._widget = None

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

    def describe(self, step: int) -> str:
        """Op number `step` (1-based, as llm_tape.id) as text."""
        op_id, op, inputs, output, shape, attrs = self.ops[step - 1]
        lines = [f"op {op_id}/{len(self.ops)}: {op}  {attrs or ''}"]
        lines += [self._tensor_line(f"in{i}", tid) for i, tid in enumerate(inputs)]
        lines.append(self._tensor_line("out", output))
        return "\n".join(lines)

    @property
    def widget(self):
        """An ipywidgets slider over the ops and a panel describing the chosen one."""
        if self._widget is None:
            import ipywidgets as widgets

            slider = widgets.IntSlider(value=1, min=1, max=len(self.ops), description="op",
                                       continuous_update=False)
            panel = widgets.HTML()

            def show(change=None):
                panel.value = f"<pre>{html.escape(self.describe(slider.value))}</pre>"

            slider.observe(show, names="value")
            show()
            self._widget = widgets.VBox([slider, panel])
        return self._widget
