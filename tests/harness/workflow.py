"""UI-format workflows (what the ComfyUI frontend saves and loads) to the API format that POST /prompt
runs, using the server's /object_info for widget order. The tests run the shipped files themselves.

Handled: widget values in input order (including widgets converted to sockets, whose value slot stays),
the extra value the frontend stores after a seed's `control_after_generate` and after an upload combo,
links through Reroute nodes, bypassed nodes (mode 4, passed through by type), muted nodes (mode 2), and
frontend-only nodes (Note, MarkdownNote, PrimitiveNode), and V3 dynamic combos (ComfyUI 0.33's Save Video
`format`), whose chosen option's widgets follow its value and are sent as `<combo>.<widget>`.
"""

from __future__ import annotations

import copy

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC_COMBO}
MUTED, BYPASSED = 2, 4


def _inputs(info: dict) -> list[tuple[str, list]]:
    return _ordered(info["input"])


def _ordered(spec: dict) -> list[tuple[str, list]]:
    return list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items())


def _is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _extra_slots(spec: list) -> int:
    """Values the frontend stores after this widget's own value."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    extra = 1 if opts.get("control_after_generate") else 0
    if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
        extra += 1
    return extra


def _fill(inputs: dict, values: list, i: int, specs: list[tuple[str, list]], prefix: str = "") -> int:
    """Puts the widget values from index `i` on, in input order, into `inputs`; returns the next index."""
    for name, spec in specs:
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if not _is_widget(spec) or opts.get("hidden"):  # a hidden input (a host's back-compat one) has no widget
            continue
        if i < len(values):
            inputs[prefix + name] = values[i]
        value = values[i] if i < len(values) else None
        i += 1 + _extra_slots(spec)
        if spec[0] == DYNAMIC_COMBO:
            option = next((o for o in opts.get("options", []) if o["key"] == value), None)
            if option is not None:
                i = _fill(inputs, values, i, _ordered(option["inputs"]), f"{prefix}{name}.")
    return i


def to_api(workflow: dict, object_info: dict) -> dict:
    """Converts a UI-format workflow to an API-format prompt {node_id: {class_type, inputs}}."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {lk[0]: lk for lk in workflow.get("links", [])}  # id -> [id, from, from_slot, to, to_slot, type]

    def source(link_id: int):
        """(node id, slot) that really produces a link's value, or ('value', v) for a PrimitiveNode."""
        _, origin, slot, _, _, typ = links[link_id][:6]
        node = nodes[origin]
        if node["type"] == "Reroute":
            return source(node["inputs"][0]["link"])
        if node["type"] == "PrimitiveNode":
            return ("value", node["widgets_values"][0])
        if node.get("mode") == BYPASSED:
            for inp in node.get("inputs", []):
                if inp.get("link") is not None and inp.get("type") == typ:
                    return source(inp["link"])
            raise ValueError(f"bypassed node {origin} ({node['type']}) has no {typ} input to pass through")
        return (str(origin), slot)

    prompt = {}
    for nid, node in nodes.items():
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode") in (MUTED, BYPASSED):
            continue
        if kind not in object_info:
            raise ValueError(f"node {nid}: type {kind!r} is not known to the server (is its pack loaded?)")
        values = node.get("widgets_values", [])
        inputs: dict = {}
        if isinstance(values, dict):  # some nodes save widgets by name
            inputs.update({k: v for k, v in values.items() if k in dict(_inputs(object_info[kind]))})
        else:
            _fill(inputs, values, 0, _inputs(object_info[kind]))
        for inp in node.get("inputs", []):
            if inp.get("link") is None:
                continue
            src = source(inp["link"])
            inputs[inp["name"]] = src[1] if src[0] == "value" else [src[0], src[1]]
        prompt[str(nid)] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title", kind)}}
    return prompt


def override(prompt: dict, class_type: str, **values) -> dict:
    """A copy of `prompt` with widget values of every node of `class_type` replaced (test-size runs)."""
    out = copy.deepcopy(prompt)
    hits = [n for n in out.values() if n["class_type"] == class_type]
    if not hits:
        raise KeyError(f"no {class_type} node in the workflow")
    for node in hits:
        for k, v in values.items():
            if k not in node["inputs"] or isinstance(node["inputs"][k], list):
                raise KeyError(f"{class_type} has no widget input {k!r}")
            node["inputs"][k] = v
    return out


def replace(prompt: dict, object_info: dict, class_type: str, new_type: str, **inputs) -> dict:
    """A copy of `prompt` where every `class_type` node becomes `new_type` with `inputs`, then with the
    nodes nothing depends on any more removed (e.g. a text encoder whose weights the tests lack)."""
    out = copy.deepcopy(prompt)
    for node in out.values():
        if node["class_type"] == class_type:
            node["class_type"], node["inputs"] = new_type, dict(inputs)
    return prune(out, object_info)


def prune(prompt: dict, object_info: dict) -> dict:
    """Drops, in place, the nodes that no output node depends on."""
    while True:
        used = {v[0] for n in prompt.values() for v in n["inputs"].values() if isinstance(v, list)}
        dead = [k for k, n in prompt.items() if k not in used and not object_info[n["class_type"]].get("output_node")]
        if not dead:
            return prompt
        for k in dead:
            del prompt[k]
