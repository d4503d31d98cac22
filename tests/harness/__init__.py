"""The test host: a real ComfyUI server with this pack loaded, tiny real-architecture Wan models, and a
converter from the UI-format workflows in `workflows/` to the API format the server runs."""
