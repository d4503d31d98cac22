"""Test-only nodes, loaded into the test server beside the pack but never shipped with it.

No text-encoder weights exist on the test machines, so conditioning comes from here: zero text tokens of
the shape a Wan text encoder (umT5-XXL) produces. PoisonImages feeds the validation tests a NaN.
"""

import torch
from comfy_api.latest import ComfyExtension, io

WAN_TEXT_DIM = 4096  # umT5-XXL hidden size, what Wan's text_embedding expects


class ZeroTextConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PatchVSRTest_ZeroTextConditioning",
            display_name="Zero Text Conditioning (tests)",
            category="testing/patchvsr",
            inputs=[io.Int.Input("tokens", default=8, min=1, max=512, tooltip="Number of zero text tokens.")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, tokens) -> io.NodeOutput:
        return io.NodeOutput([[torch.zeros(1, tokens, WAN_TEXT_DIM), {}]])


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


class TestNodes(ComfyExtension):
    async def get_node_list(self):
        return [ZeroTextConditioning, PoisonImages, RandomLatent]


async def comfy_entrypoint():
    return TestNodes()
