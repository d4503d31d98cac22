"""Adapter loader: a PatchVSR adapter file from the `patchvsr` models folder, checked against the model."""

from __future__ import annotations

import os
from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import folder_paths
from comfy_api.latest import io

from ..models.adapter import AdapterConfig
from ..models.adapter_file import load_adapter
from .host import compute_dtype, model_family, real_weight
from .sockets import CATEGORY, AdapterType
from .validate import widget_errors

FOLDER = "patchvsr"


def register_folder() -> None:
    """Adds models/patchvsr to ComfyUI's model folders (called from the extension's on_load hook)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


def adapter_files() -> list[str]:
    try:
        return [f for f in folder_paths.get_filename_list(FOLDER) if f.endswith(".safetensors")]
    except KeyError:  # folder not registered yet (schema built before on_load on some hosts)
        return []


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    config: AdapterConfig
    patcher: object  # a ModelPatcher owning the adapter module, attached to the sampler's model
    base_key: tuple  # (dim, layers, heads, channels) of the base it was checked against


def base_dims(model) -> tuple[int, int, int, int]:
    dm = model.model.diffusion_model
    return dm.dim, dm.num_layers, dm.num_heads, dm.in_dim


def load(model, adapter_name: str) -> LoadedAdapter:
    model_family(model)
    path = folder_paths.get_full_path(FOLDER, adapter_name)
    if path is None:
        raise ValueError(
            f"adapter_name: '{adapter_name}' is not in the models/{FOLDER} folder. Put the file there and refresh."
        )
    dm = model.model.diffusion_model
    # The branches copy the base's blocks as plain compute-dtype layers, whatever format the model was
    # loaded in (fp8 weights, scaled fp8, quantized tensors).
    dtype = compute_dtype(model)
    adapter = load_adapter(path, dm.blocks, dm.patch_embedding, base_dims(model), dtype, real_weight).eval()
    adapter.cast_for_inference(dtype)
    adapter.requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(
        adapter, load_device=model.load_device, offload_device=comfy.model_management.unet_offload_device()
    )
    return LoadedAdapter(adapter_name, adapter.cfg, patcher, base_dims(model))


class AdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSR_AdapterLoader",
            display_name="PatchVSR Adapter Loader",
            category=CATEGORY,
            description="Loads a trained PatchVSR adapter (patch branch, global branch with G-CA, LoRA, micro-conditions) "
            "from models/patchvsr and checks it strictly against the connected Wan model.",
            inputs=[
                io.Model.Input("model", tooltip="The Wan T2V model the adapter was trained on."),
                io.Combo.Input(
                    "adapter_name", options=adapter_files(), tooltip="A .safetensors adapter in models/patchvsr."
                ),
            ],
            outputs=[AdapterType.Output(display_name="adapter", tooltip="Connect to PatchVSR Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, adapter_name=None):
        return widget_errors(cls, adapter_name=adapter_name)

    @classmethod
    def execute(cls, model, adapter_name) -> io.NodeOutput:
        return io.NodeOutput(load(model, adapter_name))
