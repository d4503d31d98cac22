"""ComfyUI-PatchVSR: patch-wise video super-resolution on the Wan video DiT you already have.

This file only registers the nodes (ComfyUI's V3 schema). Importing it changes nothing in ComfyUI.
"""

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES, register_folder

WEB_DIRECTORY = "./js"


class PatchVSRExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # The models/patchvsr folder for adapter files, through ComfyUI's public folder registry. Done here
        # rather than in on_load, which hosts before ComfyUI 0.3.76 never call.
        register_folder()
        return list(NODES)


async def comfy_entrypoint() -> PatchVSRExtension:
    return PatchVSRExtension()
