"""Queue-time checks of widget values against the node's own schema.

ComfyUI calls a node's `validate_inputs` when a prompt is queued, before anything runs, and refuses the
prompt with the message on the node. Older hosts (the pinned v0.3.75) do not check V3 combo values
themselves, so a value sent through the API outside a combo's list reached `execute` as a KeyError; and an
input named in `validate_inputs` skips the host's own min/max check. This checks both for the inputs a node
names, from its schema, so the message and the limits never drift from the widgets.
"""

from __future__ import annotations

from numbers import Real

from ..models.plan import VAE_TIME_STRIDE


def frames_error(name: str, n: int, native: str) -> str | None:
    """None when `n` is 0 (the model's native length) or 1 + 4k frames, else the message with the neighbours."""
    if n == 0 or (n >= 1 and (n - 1) % VAE_TIME_STRIDE == 0):
        return None
    lo = max(1, (n - 1) // VAE_TIME_STRIDE * VAE_TIME_STRIDE + 1)
    hi = lo + VAE_TIME_STRIDE if n > lo else lo
    near = f"{lo} or {hi}" if hi != lo else f"{lo}"
    return f"{name}: {n} frames is not 1 + 4k (Wan's VAE needs that). Use {near}, or 0 for {native}."


def widget_errors(node_cls, **values) -> bool | str:
    """True, or one message per bad value: a combo value outside its list, a number outside min/max.
    Linked inputs arrive as None here (their values exist only when the graph runs) and are skipped."""
    specs = {i.id: i.as_dict() for i in node_cls.define_schema().inputs}
    errors = []
    for name, value in values.items():
        if value is None:
            continue
        spec = specs[name]
        options = spec.get("options")
        if options is not None and value not in options:
            shown = options if len(options) <= 20 else f"the {len(options)} files listed"
            errors.append(f"{name}: '{value}' is not one of {shown}. Pick a value from the list (refresh the page if a file was added).")  # fmt: skip
            continue
        if not isinstance(value, Real) or isinstance(value, bool):
            continue
        lo, hi = spec.get("min"), spec.get("max")
        if lo is not None and value < lo:
            errors.append(f"{name}: {value} is below the minimum {lo}. Use a value from {lo} to {hi}.")
        elif hi is not None and value > hi:
            errors.append(f"{name}: {value} is above the maximum {hi}. Use a value from {lo} to {hi}.")
    return " ".join(errors) or True
