"""Model modifications other nodes stack in front of the PatchVSR sampler: composed with the patch-wise run
or refused by name, before the model is loaded or sampled.

The sampler's wrapper (nodes/patchwise.py) must receive the whole latent of its plan at every model
evaluation. Two hooks change what the model call sees before it gets there:
- a context handler in model_options (core's Context Windows nodes: comfy/context_windows.py, called by
  comfy/samplers.py calc_cond_batch) hands the model windows of the latent along one dim;
- a model_function_wrapper (set_model_unet_function_wrapper; upstream's Seamless Tiling node, tiled
  diffusion packs) owns the whole model call and may shift, pad or cut the latent before it.
Other wrappers (WrappersMP) mostly keep the latent whole (caches, guidance); the sampler's wrapper names
them when one does not.
"""

from __future__ import annotations

import logging

import comfy.context_windows
import comfy.patcher_extension

from ..models.plan import VAE_TIME_STRIDE

log = logging.getLogger(__name__)

# Wan's latent [B, C, T, H, W], by the dim a context handler windows.
LATENT_DIMS = ("the batch", "channels", "time", "height", "width")
TIME_DIM = 2
# Wrappers core's Context Windows nodes add beside their handler (comfy/context_windows.py
# create_prepare_sampling_wrapper and, for FreeNoise on newer hosts, create_sampler_sample_wrapper): they
# read the handler, and the second raises when it is gone, so they leave the clone with it.
CONTEXT_WINDOW_WRAPPERS = (
    (comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "ContextWindows_prepare_sampling"),
    (comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "ContextWindows_sampler_sample"),
)
# Core nodes that set a model_function_wrapper, by the file their wrapper comes from.
WRAPPER_NODES = {
    "comfy_extras/nodes_seamless_tiling": "Seamless Tiling",
    "comfy_extras/nodes_chroma_radiance": "ChromaRadianceOptions",
}


def qualified_name(obj) -> str:
    """Where `obj` (a function, an object) comes from, short: ComfyUI imports core's extra nodes and custom
    node packs under their file or folder path, so a path keeps its last two parts (the node pack's folder)."""
    kind = obj if isinstance(obj, type) else type(obj)
    module = (getattr(obj, "__module__", None) or kind.__module__).replace("\\", "/")
    if "/" in module:
        module = "/".join(module.removesuffix(".py").rstrip("/").split("/")[-2:])
    return f"{module}.{getattr(obj, '__qualname__', None) or kind.__qualname__}"


def compose_model(model, plan):
    """The model PatchVSR samples with: `model` itself, or a clone without core's context windows where
    PatchVSR's own windows take their place. A ValueError names what cannot be composed and the fix."""
    check_model_function_wrapper(model)
    return without_context_windows(model, plan)


def check_model_function_wrapper(model) -> None:
    wrapper = model.model_options.get("model_function_wrapper")
    if wrapper is None:
        return
    name = qualified_name(wrapper)
    node = next((f"core's {n} node, " for m, n in WRAPPER_NODES.items() if m in name.replace(".", "/")), "")
    raise ValueError(
        f"model: a node in front of the sampler wraps the model call ({node}model_function_wrapper {name}). "
        "Such a wrapper sees the whole latent and may shift, pad or cut it before PatchVSR cuts it into "
        "patches, and PatchVSR cannot place what it changes in its plan. Remove that node from the model "
        "chain in front of PatchVSR Sampler: PatchVSR tiles the frame itself and blends its seams."
    )


def without_context_windows(model, plan):
    """`model`, or a clone of it without its context handler (and the handler's wrappers) when PatchVSR's own
    windows cover what the handler would window; the input model keeps its handler."""
    handler = model.model_options.get("context_handler")
    if handler is None:
        return model
    core = getattr(comfy.context_windows, "IndexListContextHandler", None)
    dim = getattr(handler, "dim", None)
    if core is None or not isinstance(handler, core) or not isinstance(dim, int):
        raise ValueError(
            f"model: it carries a context handler ({qualified_name(handler)}) from another node, which hands the "
            "model windows of the latent; PatchVSR cuts the latent into patches and temporal windows itself. "
            "Remove that node from the model chain in front of PatchVSR Sampler, and set the windows and patch "
            "size on PatchVSR Patch Partitioner."
        )
    if not 0 <= dim < len(LATENT_DIMS):
        raise ValueError(
            f"model: it carries context windows over dim {dim} (a Context Windows node), but Wan's latent "
            "[B, C, T, H, W] has dims 0 to 4. Set the node's dim to 2 (time: PatchVSR's own temporal windows "
            "then take over) or remove the node from the model in front of PatchVSR Sampler."
        )
    where = f"{LATENT_DIMS[dim]} (dim {dim})"
    if dim == 1:
        raise ValueError(
            f"model: it carries context windows over {where} from a Context Windows node, which would hand the "
            "model part of the latent's channels. Set the node's dim to 2 (time: PatchVSR's own temporal "
            "windows then take over) or remove the node from the model in front of PatchVSR Sampler."
        )
    if dim > TIME_DIM:
        raise ValueError(
            f"model: it carries context windows over {where} from a Context Windows node; PatchVSR already cuts "
            "every frame into patches, and windows over space would hand its sampler part of the frame. Remove "
            "the Context Windows node from the model in front of PatchVSR Sampler (or set its dim to 2, time: "
            "PatchVSR's own temporal windows then take over); for smaller patches set patch_width and "
            "patch_height on PatchVSR Patch Partitioner."
        )
    # Over time, PatchVSR's temporal windows do the same job, with the patch plan and the global context made
    # for them; over the batch there is nothing to window, a PatchVSR latent holds one clip.
    frames = plan.config.window_frames
    log.info(
        "PatchVSR: the model's context windows over %s, windows of %d with overlap %d%s from a Context Windows "
        "node, are off for this sampler; %s: windows of up to %d latent frames (%d video frames). Set "
        "window_frames on PatchVSR Patch Partitioner to change them.",
        where, handler.context_length, handler.context_overlap,
        " and FreeNoise" if getattr(handler, "freenoise", False) else "",
        "PatchVSR's own temporal windows take over" if dim == TIME_DIM else "PatchVSR windows the clip in time",
        frames, (frames - 1) * VAE_TIME_STRIDE + 1,
    )  # fmt: skip
    clone = model.clone()
    del clone.model_options["context_handler"]
    for kind, key in CONTEXT_WINDOW_WRAPPERS:
        clone.remove_wrappers_with_key(kind, key)
    return clone
