"""Test-only nodes, loaded into the test server beside the pack but never shipped with it.

No text-encoder weights exist on the test machines, so conditioning comes from here: zero text tokens of
the shape a Wan text encoder (umT5-XXL) produces. PoisonImages feeds the validation tests a NaN;
LatentStats reports on sampler outputs.
"""

import copy
import importlib.util
import json
import sys
from pathlib import Path

import torch
from comfy_api.latest import ComfyExtension, io

WAN_TEXT_DIM = 4096  # umT5-XXL hidden size, what Wan's text_embedding expects
REPO = Path(__file__).resolve().parents[3]


def _pack_flow():
    """The pack's models/flow.py (pure PyTorch), imported by path: the pack itself is loaded by ComfyUI under
    its folder's name, and a plain `import models` would find ComfyUI's own models folder."""
    spec = importlib.util.spec_from_file_location("patchvsr_test_flow", REPO / "models" / "flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ZeroTextConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_ZeroTextConditioning",
            display_name="Zero Text Conditioning (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Int.Input("tokens", default=8, min=1, max=512, tooltip="Number of zero text tokens."),
                io.Float.Input(
                    "value", default=0.0, min=-10.0, max=10.0, optional=True, tooltip="Fill value (0: zero tokens)."
                ),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, tokens, value=0.0) -> io.NodeOutput:
        return io.NodeOutput([[torch.full((1, tokens, WAN_TEXT_DIM), value), {}]])


class RandomTextConditioning(io.ComfyNode):
    """Seeded random text tokens of umT5's width, so a positive and a negative differ and cfg > 1 matters."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_RandomTextConditioning",
            display_name="Random Text Conditioning (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Int.Input("tokens", default=8, min=1, max=512, tooltip="Number of text tokens."),
                io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="Seed of the tokens."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, tokens, seed) -> io.NodeOutput:
        gen = torch.Generator().manual_seed(seed)
        return io.NodeOutput([[torch.randn(1, tokens, WAN_TEXT_DIM, generator=gen), {}]])


class T0Sigmas(io.ComfyNode):
    """The noise levels the PatchVSR sampler runs from flow time t0 (the pack's models/flow.py on the host's
    scheduler, as nodes/sampler.py computes them), as a SIGMAS for core's SamplerCustom. Made afresh every
    time: core's uni_pc writes into the SIGMAS it is given, so a cached one would come back changed."""

    @classmethod
    def define_schema(cls):
        import comfy.samplers

        return io.Schema(
            node_id="PatchVSRTest_T0Sigmas",
            display_name="Sigmas From t0 (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Model.Input("model", tooltip="The model whose model sampling (shift) the scheduler reads."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, tooltip="Any scheduler."),
                io.Int.Input("steps", default=6, min=1, max=1000, tooltip="Steps below t0."),
                io.Float.Input("t0", default=1.0, min=0.01, max=1.0, step=0.01, tooltip="Start flow time."),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # never equal to itself: never reused from the cache

    @classmethod
    def execute(cls, model, scheduler, steps, t0) -> io.NodeOutput:
        import comfy.samplers

        ms = model.get_model_object("model_sampling")
        return io.NodeOutput(
            _pack_flow().sigmas_from_t0(lambda n: comfy.samplers.calculate_sigmas(ms, scheduler, n).cpu(), steps, t0)
        )


class LatentDiff(io.ComfyNode):
    """An output node that reports how far a latent is from a reference: the largest absolute difference and
    the reference's largest magnitude, for equivalence tests that compare many pairs in one prompt."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_LatentDiff",
            display_name="Latent Diff (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Latent.Input("samples", tooltip="The latent to compare."),
                io.Latent.Input("reference", tooltip="The latent it should equal."),
                io.String.Input("tag", default="", tooltip="Returned with the result, to tell pairs apart."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, samples, reference, tag) -> io.NodeOutput:
        x, ref = samples["samples"].float(), reference["samples"].float()
        same_shape = list(x.shape) == list(ref.shape)
        diff = float((x - ref).abs().max()) if same_shape else float("inf")
        stats = {"tag": tag, "max_abs_diff": diff, "ref_max_abs": float(ref.abs().max()), "shape": list(x.shape)}
        return io.NodeOutput(ui={"patchvsr_diff": [stats]})


class EvalRecorder(io.ComfyNode):
    """A clone whose block 0 appends one JSON line per DiT call to a file in the output folder: its rows,
    each row's noise level, the patches the PatchVSR sampler put in it and the run's noise levels, so a test
    can check every evaluation against the schedule."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_EvalRecorder",
            display_name="Eval Recorder (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Model.Input("model", tooltip="The model to clone and record."),
                io.String.Input("tag", default="evals", tooltip="File name (without .jsonl) in the output folder."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, tag) -> io.NodeOutput:
        import folder_paths

        path = Path(folder_paths.get_output_directory()) / f"{tag}.jsonl"

        def record(args, extra):
            opts = args["transformer_options"]
            patches = (opts.get("patchvsr") or {}).get("patches", ())
            levels = opts.get("sample_sigmas")
            line = {
                "rows": int(args["img"].shape[0]),
                "sigmas": [float(s) for s in opts["sigmas"].reshape(-1)],
                "patches": [[w.t0, w.t1, b.y0, b.y1, b.x0, b.x1] for w, b in patches],
                "levels": None if levels is None else [float(s) for s in levels],
            }
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")
            return extra["original_block"](args)

        patched = model.clone()
        patched.set_model_patch_replace(record, "dit", "double_block", 0)
        return io.NodeOutput(patched)


class PoisonImages(io.ComfyNode):
    """Returns a copy of the frames with one NaN pixel, to check the pack rejects non-finite input."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_PoisonImages",
            display_name="Poison Images (tests)",
            category="testing/patchvsr",
            inputs=[io.Image.Input("images", tooltip="Frames to copy with one NaN pixel.")],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, images) -> io.NodeOutput:
        out = images.clone()
        out[0, 0, 0, 0] = float("nan")
        return io.NodeOutput(out)


class Channels(io.ComfyNode):
    """The frames with 1 (grey), 2 (grey + alpha), 3 or 4 (RGBA) channels, as other packs' loaders give them."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_Channels",
            display_name="Channels (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Image.Input("images", tooltip="RGB frames."),
                io.Int.Input("channels", default=4, min=1, max=4, tooltip="Channels of the output frames."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, images, channels) -> io.NodeOutput:
        grey = images.mean(-1, keepdim=True)
        alpha = torch.full_like(grey, 0.5)
        parts = {1: [grey], 2: [grey, alpha], 3: [images], 4: [images, alpha]}[channels]
        return io.NodeOutput(torch.cat(parts, -1))


class RandomLatent(io.ComfyNode):
    """A seeded random video latent of any channel count: the 48-channel Wan 2.2 tests have no VAE (its
    hard-coded width makes even a random one 2.8 GB)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_RandomLatent",
            display_name="Random Latent (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Int.Input("channels", default=16, min=1, max=256, tooltip="Latent channels."),
                io.Int.Input("frames", default=1, min=1, max=64, tooltip="Latent frames."),
                io.Int.Input("height", default=8, min=1, max=1024, tooltip="Latent rows."),
                io.Int.Input("width", default=8, min=1, max=1024, tooltip="Latent columns."),
                io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="Seed."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, channels, frames, height, width, seed) -> io.NodeOutput:
        gen = torch.Generator().manual_seed(seed)
        return io.NodeOutput({"samples": torch.randn(1, channels, frames, height, width, generator=gen)})


class LatentFrames(io.ComfyNode):
    """Latent frames start..stop-1 of a video latent: one slice of a clip, for decoding it on its own."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_LatentFrames",
            display_name="Latent Frames (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Latent.Input("samples", tooltip="A video latent [B, C, T, H, W]."),
                io.Int.Input("start", default=0, min=0, max=4096, tooltip="First latent frame."),
                io.Int.Input("stop", default=1, min=1, max=4096, tooltip="One past the last latent frame."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, samples, start, stop) -> io.NodeOutput:
        return io.NodeOutput({"samples": samples["samples"][:, :, start:stop].clone()})


class LatentStats(io.ComfyNode):
    """An output node that reports whether a latent is finite and its largest magnitude, for matrix tests
    that check many sampler nodes in one prompt without saving files."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_LatentStats",
            display_name="Latent Stats (tests)",
            category="testing/patchvsr",
            inputs=[io.Latent.Input("samples", tooltip="The latent to measure.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, samples) -> io.NodeOutput:
        x = samples["samples"]
        finite = bool(torch.isfinite(x).all())
        peak = float(x[torch.isfinite(x)].abs().max()) if finite else float("nan")
        return io.NodeOutput(ui={"patchvsr_stats": [{"finite": finite, "max_abs": peak, "shape": list(x.shape)}]})


class BlockProbe(io.ComfyNode):
    """Stands in for another extension that patches the model: a clone with a block replacement on block 0
    (what SkipLayerGuidance-like and attention-patching nodes install) that scales the block's output and
    raises unless the rows of every cond/uncond chunk carry that chunk's own text and every chunk holds the
    patches in the same order, which is how guidance extensions split ComfyUI's batch
    (transformer_options["cond_or_uncond"])."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_BlockProbe",
            display_name="Block Probe (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Model.Input("model", tooltip="The model to clone and patch."),
                io.Float.Input("scale", default=1.0, min=0.0, max=10.0, tooltip="Factor on block 0's output."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, scale) -> io.NodeOutput:
        def probe(args, extra):
            n = len(args["transformer_options"]["cond_or_uncond"])
            for i, chunk in enumerate(args["txt"].chunk(n)):
                if not all(torch.equal(chunk[0], row) for row in chunk):
                    raise RuntimeError(f"batch order: chunk {i} of the DiT batch mixes cond and uncond rows")
            # Cond and uncond see the same latent, so row r of every chunk must hold the same patch.
            imgs = args["img"].chunk(n)
            if not all(torch.equal(imgs[0], other) for other in imgs[1:]):
                raise RuntimeError("batch order: the chunks' latent rows are not in the same patch order")
            out = extra["original_block"](args)
            return {**out, "img": out["img"] * scale}

        patched = model.clone()
        patched.set_model_patch_replace(probe, "dit", "double_block", 0)
        return io.NodeOutput(patched)


class RowCounter(io.ComfyNode):
    """A clone whose block 0 appends the number of rows of every DiT call to a file in the output folder,
    so a test can count the model evaluations a run made (cond and uncond rows included)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_RowCounter",
            display_name="Row Counter (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Model.Input("model", tooltip="The model to clone and count."),
                io.String.Input("tag", default="rows", tooltip="File name (without .txt) in the output folder."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, tag) -> io.NodeOutput:
        import folder_paths

        path = f"{folder_paths.get_output_directory()}/{tag}.txt"

        def count(args, extra):
            with open(path, "a") as f:
                f.write(f"{args['img'].shape[0]}\n")
            return extra["original_block"](args)

        patched = model.clone()
        patched.set_model_patch_replace(count, "dit", "double_block", 0)
        return io.NodeOutput(patched)


class OutOfMemoryOnce(io.ComfyNode):
    """A clone whose DiT runs out of memory once: block 0 raises torch's out-of-memory error on the first
    call of more than `above` rows (what a GPU raises when a patch batch does not fit), and appends the rows
    of every call to a file in the output folder ("oom <rows>" for the failed one). Each execution of the
    node arms it again; give each test its own tag so ComfyUI's cache does not reuse a spent one."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_OutOfMemoryOnce",
            display_name="Out Of Memory Once (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Model.Input("model", tooltip="The model to clone."),
                io.Int.Input("above", default=1, min=0, max=4096, tooltip="Fail the first call of more rows."),
                io.String.Input("tag", default="oom", tooltip="File name (without .txt) in the output folder."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, above, tag) -> io.NodeOutput:
        import folder_paths

        path = f"{folder_paths.get_output_directory()}/{tag}.txt"
        armed = [True]

        def block(args, extra):
            rows = args["img"].shape[0]
            with open(path, "a") as f:
                f.write(f"{'oom ' if armed[0] and rows > above else ''}{rows}\n")
            if armed[0] and rows > above:
                armed[0] = False
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by a test)")
            return extra["original_block"](args)

        patched = model.clone()
        patched.set_model_patch_replace(block, "dit", "double_block", 0)
        return io.NodeOutput(patched)


class ModelReport(io.ComfyNode):
    """An output node that reports what a MODEL carries that changes the sampler's model call (context
    handler, model function wrapper, wrappers), after `samples` is made: a test checks that a node which
    used this model left it as it was."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_ModelReport",
            display_name="Model Report (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Model.Input("model", tooltip="The model to report on."),
                io.Latent.Input("samples", tooltip="Any latent: the report waits for the node that makes it."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, samples) -> io.NodeOutput:
        options = model.model_options
        wrappers = {kind: sorted(k for k, fns in by_key.items() if fns) for kind, by_key in model.wrappers.items()}
        report = {
            "context_handler": type(options["context_handler"]).__name__ if "context_handler" in options else None,
            "model_function_wrapper": "model_function_wrapper" in options,
            "wrappers": {kind: keys for kind, keys in wrappers.items() if keys},
        }
        return io.NodeOutput(ui={"patchvsr_model": [report]})


class ForeignContextHandler:
    """A context handler of another node pack (no core IndexListContextHandler): it only has to exist, the
    sampler refuses it before any model call."""

    dim = 2

    def should_use_context(self, *args, **kwargs):
        return False


class OtherContextHandler(io.ComfyNode):
    """A clone with another pack's context handler in its model options (no core node makes one)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_OtherContextHandler",
            display_name="Other Context Handler (tests)",
            category="testing/patchvsr",
            inputs=[io.Model.Input("model", tooltip="The model to clone.")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        patched = model.clone()
        patched.model_options["context_handler"] = ForeignContextHandler()
        return io.NodeOutput(patched)


class SeamlessTiling(io.ComfyNode):
    """Stands in for upstream ComfyUI's Seamless Tiling node (comfy_extras/nodes_seamless_tiling.py, not on
    the test hosts): a clone whose model function wrapper runs the model on the latent rolled by half its
    width and rolls the prediction back, as upstream's does for its shifted pass."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_SeamlessTiling",
            display_name="Seamless Tiling stand-in (tests)",
            category="testing/patchvsr",
            inputs=[io.Model.Input("model", tooltip="The model to clone.")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        def model_function_wrapper(apply_model, args):
            x = args["input"]
            shift = x.shape[-1] // 2
            out = apply_model(torch.roll(x, shift, dims=-1), args["timestep"], **args["c"])
            return torch.roll(out, -shift, dims=-1)

        patched = model.clone()
        patched.set_model_unet_function_wrapper(model_function_wrapper)
        return io.NodeOutput(patched)


class CropLatent(io.ComfyNode):
    """A clone with an APPLY_MODEL wrapper (key 'patchvsr_test_crop') that hands the model the top half of
    the latent and pads the prediction back: another pack's wrapper that reshapes the latent, which no
    core node on the test hosts does."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_CropLatent",
            display_name="Crop Latent wrapper (tests)",
            category="testing/patchvsr",
            inputs=[io.Model.Input("model", tooltip="The model to clone.")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        import comfy.patcher_extension

        def crop(executor, x, *args, **kwargs):
            h = x.shape[-2] // 2
            out = executor(x[..., :h, :], *args, **kwargs)
            return torch.cat([out, torch.zeros_like(out)], dim=-2)

        patched = model.clone()
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "patchvsr_test_crop", crop)
        return io.NodeOutput(patched)


class ModelDims(io.ComfyNode):
    """An output node that reports what the host detected a loaded diffusion model as (its supported-model
    config and the Wan DiT's hyperparameters), so a benchmark can assert a generated checkpoint loads as the
    real model it stands in for."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_ModelDims",
            display_name="Model Dims (tests)",
            category="testing/patchvsr",
            inputs=[io.Model.Input("model", tooltip="The loaded model to describe.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        dm = model.model.diffusion_model
        names = ("model_type", "dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim", "text_dim")
        dims = {name: getattr(dm, name, None) for name in names}
        dims["patch_size"] = list(getattr(dm, "patch_size", ()))
        dims["config"] = type(model.model.model_config).__name__
        dims["parameters"] = sum(p.numel() for p in dm.parameters())
        dims["dtype"] = str(model.model.get_dtype()).removeprefix("torch.")
        return io.NodeOutput(ui={"patchvsr_dims": [dims]})


class AdapterInfo(io.ComfyNode):
    """An output node that reports a loaded PatchVSR adapter (its parameters and dtypes), so a benchmark can run
    the Adapter Loader by itself and measure what loading costs."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_AdapterInfo",
            display_name="Adapter Info (tests)",
            category="testing/patchvsr",
            inputs=[io.Custom("PATCHVSR_ADAPTER").Input("adapter", tooltip="The adapter from the Adapter Loader.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, adapter) -> io.NodeOutput:
        module = adapter.patcher.model
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters()})
        info = {"name": adapter.name, "parameters": sum(p.numel() for p in module.parameters()), "dtypes": dtypes,
                "bytes": sum(p.nbytes for p in module.parameters())}  # fmt: skip
        return io.NodeOutput(ui={"patchvsr_adapter": [info]})


class PoolCodec(torch.nn.Module):
    """A stand-in for a Wan 2.1 VAE's network with its shapes (16 channels, 8x space, 1 + 4k frames in time)
    and none of its cost: encode averages each latent cell's pixels (the first frame alone, then groups of 4),
    decode repeats them back."""

    def encode(self, x):  # [B, 3, N, H, W] -> [B, 16, T, H/8, W/8]
        first, rest = x[:, :, :1], x[:, :, 1:]
        groups = rest.reshape(*rest.shape[:2], -1, 4, *rest.shape[3:]).mean(3) if rest.shape[2] else rest
        z = torch.nn.functional.avg_pool3d(torch.cat([first, groups], 2), (1, 8, 8))
        return z.repeat(1, 6, 1, 1, 1)[:, :16]

    def decode(self, z):  # [B, 16, T, h, w] -> [B, 3, 4T - 3, 8h, 8w]
        x = z[:, :3].repeat_interleave(8, 3).repeat_interleave(8, 4)
        return torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(4, 2)], 2)


class CheapVAE(io.ComfyNode):
    """A copy of a Wan 2.1 VAE whose network is the PoolCodec: ComfyUI's own VAE around it (encode, the tiled
    decode with its full-size buffers) runs as usual, for tests where the frame count and size matter and the
    pictures do not (peak memory over long clips). The input VAE is not changed."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_CheapVAE",
            display_name="Cheap VAE (tests)",
            category="testing/patchvsr",
            inputs=[io.Vae.Input("vae", tooltip="A Wan 2.1 VAE to copy.")],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, vae) -> io.NodeOutput:
        cheap = copy.copy(vae)
        cheap.first_stage_model = PoolCodec()
        return io.NodeOutput(cheap)


class SaveFrames(io.ComfyNode):
    """An output node that saves IMAGE frames as a float32 .npy in the output folder, for exact comparisons."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_SaveFrames",
            display_name="Save Frames (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Image.Input("images", tooltip="The frames to save."),
                io.String.Input("tag", default="frames", tooltip="File name (without .npy) in the output folder."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, tag) -> io.NodeOutput:
        import folder_paths
        import numpy as np

        np.save(Path(folder_paths.get_output_directory()) / f"{tag}.npy", images.float().cpu().numpy())
        return io.NodeOutput(ui={"patchvsr_frames": [{"tag": tag, "shape": list(images.shape)}]})


def _pack_module(name: str):
    """One of the pack's node modules as this server loaded it (through a symlinked folder, under a name of
    the host's choosing): found by its file."""
    path = (REPO / "nodes" / f"{name}.py").resolve()
    found = [
        m for m in list(sys.modules.values()) if getattr(m, "__file__", None) and Path(m.__file__).resolve() == path
    ]
    assert found, f"the server has not loaded {path}"
    return found[0]


class ReadFrames(io.ComfyNode):
    """Frames start..stop-1 of a file-backed VIDEO as the long-video node reads them for a chunk, to compare
    with the host's Get Video Components."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_ReadFrames",
            display_name="Read Frames (tests)",
            category="testing/patchvsr",
            inputs=[
                io.Video.Input("video", tooltip="A VIDEO from Load Video."),
                io.Int.Input("start", default=0, min=0, max=1 << 20, tooltip="First frame."),
                io.Int.Input("stop", default=1, min=1, max=1 << 20, tooltip="One past the last frame."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, video, start, stop) -> io.NodeOutput:
        pack = _pack_module("long_video")
        return io.NodeOutput(pack.read_frames(video, pack.open_source(video), start, stop))


class TestNodes(ComfyExtension):
    async def get_node_list(self):
        return [
            CheapVAE,
            SaveFrames,
            ReadFrames,
            ModelDims,
            AdapterInfo,
            ZeroTextConditioning,
            RandomTextConditioning,
            T0Sigmas,
            LatentDiff,
            EvalRecorder,
            PoisonImages,
            Channels,
            RandomLatent,
            LatentFrames,
            LatentStats,
            BlockProbe,
            RowCounter,
            OutOfMemoryOnce,
            ModelReport,
            OtherContextHandler,
            SeamlessTiling,
            CropLatent,
        ]


async def comfy_entrypoint():
    return TestNodes()
