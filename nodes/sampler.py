"""LoRA-patched DiT sampler: denoises every patch with multi-patch joint modulation at every step."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import comfy.lora
import comfy.lora_convert
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import latent_preview
import torch
from comfy_api.latest import io
from safetensors import SafetensorError

from ..models.blend import StitchConfig
from ..models.flow import sigmas_from_t0
from .adapter import base_dims
from .compose import compose_model
from .host import Progress, check_finite, model_family
from .patchwise import NonFiniteEvaluation, attach
from .sockets import CATEGORY, AdapterType, GlobalContextType, PatchPlanType, StitcherType
from .validate import widget_errors

NO_LORA = "None"


def check_inputs(model, latent, plan, context, adapter=None) -> None:
    family = model_family(model)
    g = plan.geometry
    if family.latent_channels != g.latent_channels:
        raise ValueError(
            f"model: a {family.name} model, but the plan was made for {g.family}. Use one model for the partitioner and the sampler."
        )
    x = latent["samples"]
    want = [1, g.latent_channels, *plan.latent_shape]
    if list(x.shape) != want:
        raise ValueError(
            f"latent: shape {list(x.shape)}, but the plan needs {want} ({g.target_hw[1]}x{g.target_hw[0]}). "
            "Connect the latent from PatchVSR Upscale & Encode made with this plan."
        )
    check_finite(x, "latent")
    if latent.get("noise_mask") is not None:
        raise ValueError(
            "latent: it carries a noise mask (Set Latent Noise Mask, or an image-to-video latent); PatchVSR "
            "upscales whole frames. Connect the latent from PatchVSR Upscale & Encode."
        )
    if context is not None and context.plan_key != (plan.config, plan.geometry):
        raise ValueError(
            "context: this global context was built for another plan. Connect the same plan to the Global Context node."
        )
    if adapter is not None:
        if adapter.base_key != base_dims(model):
            raise ValueError(
                f"adapter: '{adapter.name}' was loaded for a model of (dim, layers, heads, channels) {adapter.base_key}, "
                f"this one is {base_dims(model)}. Connect the same model to the Adapter Loader and the sampler."
            )
        if context is None:
            raise ValueError("context: a trained adapter needs the global context. Connect PatchVSR Global Context.")


# Conditioning keys that carry images or latents on the full frame (image-to-video, references, control):
# PatchVSR cannot give each patch its part of them, so they are refused before any sampling.
UNCUT_CONDITIONING = {
    "concat_latent_image": "a start image latent (image-to-video nodes)",
    "concat_mask": "an image-to-video mask",
    "clip_vision_output": "CLIP vision features (image-to-video nodes)",
    "reference_latents": "reference latents (reference-image nodes)",
    "context_latents": "in-context reference latents",
    "time_dim_concat": "latents concatenated in time",
    "control": "a ControlNet",
    "vace_frames": "VACE control frames",
}
# The seed also reaches ComfyUI's samplers, some of which add 1 to it for a torch generator (ddim): keep it
# in range so every value of the 64-bit seed widget works.
SAMPLER_SEED_RANGE = 2**63


def check_conditioning(conditioning, name: str) -> None:
    """Raises if `conditioning` carries something PatchVSR cannot cut into patches."""
    for _, options in conditioning:
        found = [what for key, what in UNCUT_CONDITIONING.items() if options.get(key) is not None]
        if found:
            raise ValueError(
                f"{name}: this conditioning carries {', '.join(found)}, made for the whole frame; PatchVSR cannot "
                "cut it into patches. Connect plain text conditioning (CLIP Text Encode) to the sampler."
            )


def apply_adapter_lora(model, adapter):
    """A clone of `model` with the adapter's LoRA merged through ComfyUI's own LoRA loading."""
    patched, _ = comfy.sd.load_lora_for_models(model, None, adapter.patcher.model.lora_state_dict(), 1.0, 0.0)
    return patched


def load_lora(model, lora_name: str, strength: float):
    """A clone of `model` with a ComfyUI LoRA file applied through ModelPatcher patches."""
    if lora_name == NO_LORA or strength == 0.0:
        return model
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise ValueError(f"lora_name: '{lora_name}' is not in the loras folder. Pick another or '{NO_LORA}'.")
    try:
        lora = comfy.utils.load_torch_file(path, safe_load=True)
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(
            f"lora_name: '{lora_name}' cannot be read as a LoRA ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            f"The file is empty, cut short or not a safetensors file: re-download it, or pick '{NO_LORA}'."
        ) from e
    check_lora_matches(model, lora, lora_name)
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0.0)
    return patched


# Suffixes of a LoRA file's keys after the module name, in ComfyUI's accepted formats; what remains of a key
# is the module it patches, so the file's module count can be set against the weights it matched.
LORA_KEY_SUFFIXES = (
    ".lora_up.weight", ".lora_down.weight", ".lora_mid.weight", ".lora_A.weight", ".lora_B.weight",
    ".lora.up.weight", ".lora.down.weight", "_lora.up.weight", "_lora.down.weight", ".alpha", ".diff", ".diff_b",
    ".set_weight", ".dora_scale", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".lokr_w1", ".lokr_w2",
    ".oft_blocks", ".reshape_weight",
)  # fmt: skip


def check_lora_matches(model, lora: dict, lora_name: str) -> None:
    """Refuses a LoRA file that patches none, or less than half, of the modules it holds on this model: a
    LoRA for another model family (or a file that is no LoRA) would otherwise do nothing, silently."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    matched = len(comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map, log_missing=False))
    modules = set()
    for key in lora:
        modules.add(next((key[: -len(x)] for x in LORA_KEY_SUFFIXES if key.endswith(x)), key))
    if matched == 0 or matched * 2 < len(modules):
        family = model_family(model).name
        raise ValueError(
            f"lora_name: '{lora_name}' patches {matched} weights of this {family} model, but holds {len(modules)} "
            f"modules ({len(lora)} tensors): it is a LoRA for another model (or not a LoRA at all). Pick a LoRA "
            f"trained on this Wan model, or '{NO_LORA}'."
        )


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler node's widgets, by their input names: what one PatchVSR sampling run is asked for."""

    seed: int = 0
    steps: int = 20
    cfg: float = 5.0
    sampler_name: str = "euler"
    scheduler: str = "simple"
    t0: float = 0.3  # start noise level as flow time (Wan's shift makes ComfyUI's `denoise` misleading)
    patch_batch: int = 0  # patches per DiT call; 0 adapts to free memory
    lora_name: str = NO_LORA
    lora_strength: float = 1.0


def sample(model, positive, negative, latent: dict, plan, settings: SamplerSettings, context=None, stitcher=None,
           adapter=None, progress: Progress | None = None, hold: torch.Tensor | None = None) -> dict:  # fmt: skip
    """The PatchVSR sampling run: the upscaled `latent` denoised patch-wise from t0 with any ComfyUI sampler.
    `progress` (default: a bar of its own) counts the run's patch evaluations; a caller running several
    samplings (the long-video path) passes one bar for all of them. `hold`: [1, 1, T, H, W] in [0, 1], ComfyUI's
    latent noise mask: where it is below 1 the latent is held to the given one (noised to each step's level,
    as core's masked sampling does) instead of denoised (the long-video path holds each chunk's overlap to
    the previous chunk's result)."""
    s = settings
    check_inputs(model, latent, plan, context, adapter)
    check_conditioning(positive, "positive")
    check_conditioning(negative, "negative")
    model = compose_model(model, plan)
    stitch = stitcher if stitcher is not None else StitchConfig()
    model = load_lora(model, s.lora_name, s.lora_strength)
    if adapter is not None:
        model = apply_adapter_lora(model, adapter)
    # 1. Patch-wise clone: the wrapper runs the DiT per patch batch and fuses at every evaluation.
    own_bar = progress is None
    progress = Progress(1) if own_bar else progress
    patched, wrapper = attach(
        model, plan, stitch, context, s.patch_batch, progress, adapter, latent["samples"], s.seed, cfg=s.cfg
    )
    # 2. Noise levels from t0 (flow time), not ComfyUI's step-fraction `denoise`; the wrapper reads its step
    #    from them (the shifted stitch changes grids between steps).
    model_sampling = patched.get_model_object("model_sampling")
    sigmas = sigmas_from_t0(
        lambda n: comfy.samplers.calculate_sigmas(model_sampling, s.scheduler, n).cpu(), s.steps, s.t0
    )
    run_total = wrapper.set_sigmas(sigmas)
    if own_bar:
        progress.total = run_total
    # 3. SDEdit from the upscaled latent: noise_scaling mixes (1 - t0) latent + t0 noise.
    x = latent["samples"]
    noise = comfy.sample.prepare_noise(x, s.seed)

    # 4. Live preview of the whole stitched frame, as core KSampler shows it: the server's preview method
    #    (--preview-method, or the frontend's per-run choice on newer hosts) and the same previewer, fed the
    #    fused x0 prediction; the progress bar keeps counting patch batches.
    previewer = latent_preview.get_previewer(patched.load_device, patched.get_model_object("latent_format"))

    def callback(step, x0, xt, total):
        preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer is not None else None
        wrapper.on_step(step, preview)

    try:
        out = comfy.sample.sample_custom(
            patched, noise, s.cfg, comfy.samplers.sampler_object(s.sampler_name), sigmas, positive, negative, x,
            noise_mask=hold, callback=callback, disable_pbar=True, seed=s.seed % SAMPLER_SEED_RANGE,
        )  # fmt: skip
    except NonFiniteEvaluation as e:
        # Stopped at the first step instead of after the whole run: name what most likely blew up.
        if adapter is not None:
            suspect = f"adapter: '{adapter.name}'"
            fix = "Its weights are far out of scale (a diverged or damaged training): retrain it or use another"
        elif s.lora_name != NO_LORA and s.lora_strength != 0.0:
            suspect = f"lora_name: '{s.lora_name}' at strength {s.lora_strength}"
            fix = "Lower lora_strength or pick another LoRA"
        else:
            suspect = "model"
            fix = "Check the model file and the latent (lower cfg if it is very high)"
        raise ValueError(f"{suspect}: {e}; sampling stopped at step 1 of {s.steps}. {fix}.") from e
    check_finite(out, "the sampler's output (lower cfg or check the model)")
    return {"samples": out.to(torch.float32)}


class PatchSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSR_Sampler",
            display_name="PatchVSR Sampler",
            category=CATEGORY,
            description="Denoises the upscaled latent patch by patch at the model's native size, fusing all overlapping "
            "patch predictions at every step (multi-patch joint modulation). Works with any sampler and scheduler.",
            inputs=[
                io.Model.Input("model", tooltip="The Wan T2V model. It is cloned, never changed."),
                io.Conditioning.Input("positive", tooltip="Text conditioning describing the clip."),
                io.Conditioning.Input("negative", tooltip="Negative text conditioning (used when cfg > 1)."),
                io.Latent.Input("latent", tooltip="The upscaled latent from PatchVSR Upscale & Encode."),
                PatchPlanType.Input("plan", tooltip="The plan from PatchVSR Patch Partitioner."),
                GlobalContextType.Input(
                    "context",
                    optional=True,
                    tooltip="Optional global context from PatchVSR Global Context: keeps patches consistent with the whole frame.",
                ),
                StitcherType.Input(
                    "stitcher",
                    optional=True,
                    tooltip="Optional PatchVSR Latent Stitcher; default when unconnected: shifted (one grid per step whose borders move, the paper's weighted scheme on the last step).",
                ),
                AdapterType.Input(
                    "adapter",
                    optional=True,
                    tooltip="Optional trained PatchVSR adapter from PatchVSR Adapter Loader (needs the global context). "
                    "With one, t0 = 1.0 (pure noise) works, as in the paper.",
                ),
                io.Combo.Input(
                    "lora_name",
                    options=[NO_LORA] + folder_paths.get_filename_list("loras"),
                    default=NO_LORA,
                    tooltip="Optional ComfyUI LoRA applied to the base model through ModelPatcher patches.",
                ),
                io.Float.Input(
                    "lora_strength", default=1.0, min=-4.0, max=4.0, step=0.05, tooltip="Strength of the LoRA."
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Noise seed."
                ),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Denoising steps taken from t0 down to 0."),
                io.Float.Input(
                    "cfg",
                    default=5.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance (paper: 5.0; 1.0 halves the cost).",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.SAMPLER_NAMES,
                    default="euler",
                    tooltip="Any ComfyUI sampler.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.SCHEDULER_NAMES,
                    default="simple",
                    tooltip="Any ComfyUI scheduler; its spacing is kept below t0.",
                ),
                io.Float.Input(
                    "t0",
                    default=0.3,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip="Start noise level as flow time: 0.3 keeps the input's structure and adds detail; 1.0 starts from pure noise (for trained adapters).",
                ),
                io.Int.Input(
                    "patch_batch",
                    default=0,
                    min=0,
                    max=64,
                    tooltip="Patches per DiT call: 0 takes as many as fit in the device's free memory. More is "
                    "faster on a big GPU, memory grows with it. A call that runs out of memory is retried with "
                    "half as many patches.",
                ),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The full-size denoised latent.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name=None, sampler_name=None, scheduler=None):
        return widget_errors(cls, lora_name=lora_name, sampler_name=sampler_name, scheduler=scheduler)

    @classmethod
    def execute(cls, model, positive, negative, latent, plan, context=None, stitcher=None, adapter=None,
                **widgets) -> io.NodeOutput:  # fmt: skip
        settings = SamplerSettings(**widgets)
        return io.NodeOutput(sample(model, positive, negative, latent, plan, settings, context, stitcher, adapter))
