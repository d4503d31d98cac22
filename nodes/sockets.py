"""The pack's own socket types. Values on these sockets are immutable (frozen dataclasses)."""

from comfy_api.latest import io

PatchPlanType = io.Custom("PATCHVSR_PLAN")
GlobalContextType = io.Custom("PATCHVSR_CONTEXT")
StitcherType = io.Custom("PATCHVSR_STITCHER")
AdapterType = io.Custom("PATCHVSR_ADAPTER")

CATEGORY = "video/PatchVSR"
