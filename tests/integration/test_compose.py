"""What artists stack on the model in front of the sampler, in the real server with the host's own nodes:
core's Context Windows over time give way to PatchVSR's own temporal windows (same result, one log line,
the input model unchanged); over space or channels, a model function wrapper (core's ChromaRadianceOptions
on both hosts; a stand-in for upstream's Seamless Tiling, which neither host has) and another pack's context
handler are refused by name before the DiT runs; a wrapper that reshapes the latent is named at the model
call instead of an assert deep in the pack."""

import pytest
import torch
from test_adapter_server import latents
from test_host_hooks import graph, run_latent
from test_validation import error_text

pytestmark = pytest.mark.integration
WAN_WINDOWS = "WanContextWindowsManual"  # both hosts: length and overlap in video frames, dim 2
WINDOWS = "ContextWindowsManual"  # both hosts: length and overlap in latent frames, any dim


def core_node(object_info: dict, kind: str, **given) -> dict:
    """A core node with the given inputs and every other widget at its default (first option for a combo
    without one): the hosts differ in their nodes' widgets (0.33 adds FreeNoise and retain lists)."""
    inputs = {}
    for name, spec in object_info[kind]["input"].get("required", {}).items():
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if name in given or "default" in opts:
            inputs[name] = given.get(name, opts.get("default"))
        elif isinstance(spec[0], list) or spec[0] == "COMBO":
            inputs[name] = (spec[0] if isinstance(spec[0], list) else opts["options"])[0]
    return {"class_type": kind, "inputs": inputs | given}


def clip_graph(save: str, frames: int = 3) -> dict:
    """test_host_hooks' tiny run on a clip of `frames` latent frames."""
    prompt = graph(save=save)
    prompt["4"]["inputs"]["frames"] = prompt["6"]["inputs"]["frames"] = frames
    return prompt


def with_model_node(prompt: dict, node: dict, count: str | None = None) -> dict:
    """The sampler's model through `node` (and first through a DiT call counter writing `count`.txt)."""
    source = ["1", 0]
    if count is not None:
        prompt["61"] = {"class_type": "PatchVSRTest_RowCounter", "inputs": {"model": source, "tag": count}}
        source = ["61", 0]
    prompt["60"] = node | {"inputs": node["inputs"] | {"model": source}}
    prompt["7"]["inputs"]["model"] = ["60", 0]
    return prompt


def log_since(server, start: int) -> str:
    return server.log_path.read_text(errors="replace")[start:]


@pytest.mark.parametrize(
    "kind, widgets",
    [
        (WAN_WINDOWS, {"context_length": 5, "context_overlap": 4}),  # 2 latent frames, overlap 1
        (WINDOWS, {"context_length": 2, "context_overlap": 1, "dim": 2}),
        (WINDOWS, {"context_length": 2, "context_overlap": 1, "dim": 0}),  # core's default dim: the batch
    ],
    ids=["wan", "manual-time", "manual-batch"],
)
def test_context_windows_over_time_give_way_to_patchvsrs_own(server, object_info, kind, widgets):
    """The windowed model samples exactly as the plain one (PatchVSR's temporal windows cover the clip), says
    so in one log line, and the Context Windows node's model still carries its handler afterwards."""
    tag = f"cw_{kind}_{widgets.get('dim', 2)}"
    (plain,) = run_latent(server, clip_graph(f"{tag}_plain")).values()
    prompt = with_model_node(clip_graph(tag), core_node(object_info, kind, **widgets))
    prompt["62"] = {"class_type": "PatchVSRTest_ModelReport", "inputs": {"model": ["60", 0], "samples": ["7", 0]}}
    start = len(server.log_path.read_text(errors="replace"))
    result = server.run(prompt)
    (windowed,) = latents(server, result).values()
    assert windowed.equal(plain)
    lines = [line for line in log_since(server, start).splitlines() if "PatchVSR: the model's context windows" in line]
    assert len(lines) == 1, log_since(server, start)[-3000:]
    assert "window_frames on PatchVSR Patch Partitioner" in lines[0], lines[0]
    if widgets.get("dim", 2) == 2:
        assert "over time (dim 2)" in lines[0] and "PatchVSR's own temporal windows take over" in lines[0], lines[0]
    (report,) = result.outputs["62"]["patchvsr_model"]
    assert report["context_handler"] == "IndexListContextHandler", report
    assert "ContextWindows_prepare_sampling" in report["wrappers"]["prepare_sampling"], report


@pytest.mark.parametrize("dim, where", [(3, "height (dim 3)"), (4, "width (dim 4)"), (1, "channels (dim 1)")])
def test_context_windows_over_space_or_channels_are_refused_by_name(server, object_info, dim, where):
    tag = f"cw_refused_{dim}"
    node = core_node(object_info, WINDOWS, context_length=4, context_overlap=1, dim=dim)
    msg = error_text(server.run(with_model_node(clip_graph(tag), node, count=tag)))
    assert f"model: it carries context windows over {where} from a Context Windows node" in msg, msg
    assert "set its dim to 2" in msg or "Set the node's dim to 2" in msg, msg
    assert not (server.output_dir / f"{tag}.txt").exists(), "the DiT ran before the refusal"


def test_another_packs_context_handler_is_refused_by_name(server):
    tag = "cw_foreign"
    node = {"class_type": "PatchVSRTest_OtherContextHandler", "inputs": {}}
    msg = error_text(server.run(with_model_node(clip_graph(tag), node, count=tag)))
    assert "model: it carries a context handler (" in msg and "ForeignContextHandler) from another node" in msg, msg
    assert "PatchVSR Patch Partitioner" in msg, msg
    assert not (server.output_dir / f"{tag}.txt").exists(), "the DiT ran before the refusal"


@pytest.mark.parametrize("kind", ["ChromaRadianceOptions", "PatchVSRTest_SeamlessTiling"])
def test_model_function_wrappers_are_refused_by_name(server, object_info, kind):
    """A wrapper around the whole model call: core's ChromaRadianceOptions (both hosts), and a stand-in for
    upstream's Seamless Tiling, which rolls the latent (its shape unchanged: no check at the model call
    could tell)."""
    tag = f"mfw_{kind}"
    if kind == "ChromaRadianceOptions":  # a tile size, or the node returns the model as it came
        node = core_node(object_info, kind, nerf_tile_size=32)
    else:
        node = {"class_type": kind, "inputs": {}}
    msg = error_text(server.run(with_model_node(clip_graph(tag, frames=1), node, count=tag)))
    assert "model: a node in front of the sampler wraps the model call (" in msg, msg
    assert "model_function_wrapper" in msg and "Remove that node" in msg, msg
    if kind == "ChromaRadianceOptions":
        assert "core's ChromaRadianceOptions node" in msg and "nodes_chroma_radiance" in msg, msg
    assert not (server.output_dir / f"{tag}.txt").exists(), "the DiT ran before the refusal"


def test_a_wrapper_that_reshapes_the_latent_is_named_not_asserted(server):
    """Another pack's APPLY_MODEL wrapper hands the model half the latent: the sampler's wrapper says which
    wrappers are on the model and what to do, where it used to fail an assert in the pack."""
    node = {"class_type": "PatchVSRTest_CropLatent", "inputs": {}}
    msg = error_text(server.run(with_model_node(clip_graph("crop", frames=1), node)))
    assert "model: the sampler's model call handed PatchVSR a latent of shape [2, 16, 1, 6, 16]" in msg, msg
    assert "but the plan is 1x12x16" in msg and "apply_model 'patchvsr_test_crop'" in msg, msg
    assert "AssertionError" not in msg, msg


def test_core_attention_backend_composes_with_the_adapters_gca(server, object_info):
    """Core's Model Attention Backend (ComfyUI 0.33; upstream too) sets an attention override: G-CA's override
    in the adapter's cross-attention runs every attention through it, and the result is the one without the
    node (the same attention math on this CPU server)."""
    if "ModelAttentionBackend" not in object_info:
        pytest.skip("this host has no Model Attention Backend node")
    (plain,) = run_latent(server, graph(adapter=True, save="backend_plain")).values()
    node = core_node(object_info, "ModelAttentionBackend", attention="pytorch attention")
    (through,) = run_latent(server, with_model_node(graph(adapter=True, save="backend"), node)).values()
    torch.testing.assert_close(through, plain, atol=1e-4, rtol=1e-4)
