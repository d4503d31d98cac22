"""Pure PyTorch core of ComfyUI-PatchVSR: patch plans, fusion weights, joint modulation, global context.

Nothing here imports ComfyUI, so it can be tested and trained without the host. The ComfyUI glue lives in
`nodes/`.
"""
