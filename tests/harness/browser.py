"""The real ComfyUI web frontend in headless Chromium (Debian's package, installed by .ci/bootstrap), driven
by Playwright: load a shipped workflow from the pack's templates, point it at the tiny models through the
page's own graph, press the real Run button and follow the page's websocket.

No browser is downloaded: Playwright drives the system's /usr/bin/chromium. The flags keep it off the
network (this machine reaches none) and out of any profile but a fresh one.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .runs import INPUT_CLIP
from .tiny_models import DISTILL_LORA_NAME, DIT, VAE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PACK = "ComfyUI-PatchVSR"
# The pack's extension (js/patchvsr.js) registers this name and colours every PatchVSR node.
EXTENSION = "PatchVSR.NodeColours"
EXTENSION_COLOUR = "#223a5e"
# The Run button: frontend 1.49 (ComfyUI 0.33) marks it with a test id, 1.32 (pinned) names the split
# button's main half "Run".
RUN_BUTTON = '[data-testid="queue-button"], button.p-splitbutton-button[aria-label="Run"]'
# Dialogs and error overlays the frontend shows for missing nodes and for a prompt the server rejects.
DIALOGS = ".p-dialog, [data-testid='error-overlay-see-errors']"
# Settings of an artist who has used ComfyUI before (no first-run templates dialog over the canvas), and a
# canvas drawn at most twice a second without the minimap: software rendering in a headless browser
# otherwise takes a core from the server on a 2-core machine.
SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.MaximumFps": 2, "Comfy.Minimap.Visible": False}


@contextmanager
def chromium(user_data_dir: Path | None = None, viewport=(2400, 1350)):
    """A headless Chromium with a fresh profile; yields the Playwright browser context."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `bash .ci/bootstrap` installs Debian's chromium package")
    with tempfile.TemporaryDirectory(prefix="patchvsr-chromium-") as fresh, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(user_data_dir or fresh), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )  # fmt: skip
        try:
            yield ctx
        finally:
            ctx.close()


@dataclass
class Socket:
    """What the page's websocket received: JSON messages and binary frames (previews) in order."""

    messages: list = field(default_factory=list)  # (seconds since start, parsed JSON message)
    binary: list = field(default_factory=list)  # (seconds since start, byte length, event type)
    start: float = field(default_factory=time.monotonic)

    def attach(self, page) -> None:
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload) -> None:
        t = time.monotonic() - self.start
        if isinstance(payload, (bytes, bytearray)):
            # ComfyUI's binary frames start with a big-endian uint32 event type (1 = preview image).
            self.binary.append((t, len(payload), int.from_bytes(payload[:4], "big")))
        else:
            self.messages.append((t, json.loads(payload)))

    def find(self, kind: str, prompt_id: str | None = None) -> list[tuple[float, dict]]:
        return [
            (t, m)
            for t, m in self.messages
            if m.get("type") == kind and (prompt_id is None or m.get("data", {}).get("prompt_id") == prompt_id)
        ]


def open_app(page, url: str, timeout_ms: int = 120_000) -> None:
    """Opens the ComfyUI page and waits until the app, its graph and the pack's extension are up."""
    for key, value in SETTINGS.items():
        requests.post(f"{url}/settings/{key}", json=value, timeout=30).raise_for_status()
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_function(
        "name => window.app && window.app.graph && (window.app.extensions || []).some(e => e.name === name)",
        arg=EXTENSION,
        timeout=timeout_ms,
    )


def visible_dialogs(page) -> list[str]:
    """Texts of the dialogs and error overlays on screen."""
    return page.evaluate(
        """sel => Array.from(document.querySelectorAll(sel))
            .filter(d => d.offsetParent !== null || d.getClientRects().length > 0)
            .map(d => d.innerText.trim().slice(0, 400))""",
        DIALOGS,
    )


def load_template(page, name: str) -> list[dict]:
    """Loads the pack's template `name` the way the templates browser does: from the list ComfyUI builds
    from workflows/ (/api/workflow_templates) and the file it serves, into app.loadGraphData. Returns the
    loaded nodes as {id, type, known, colour}."""
    return page.evaluate(
        """async ([pack, name]) => {
          const listed = await (await fetch('/api/workflow_templates')).json();
          if (!(listed[pack] || []).includes(name)) throw new Error(`${name} is not among ${pack}'s templates`);
          const res = await fetch(`/api/workflow_templates/${pack}/${name}.json`);
          const workflow = await res.json();
          await window.app.loadGraphData(workflow, true, true, name);
          const types = window.LiteGraph.registered_node_types;
          return window.app.graph.nodes.map(n => ({id: n.id, type: n.type, known: n.type in types, colour: n.color}));
        }""",
        [PACK, name],
    )


def use_tiny_models(page, steps: int = 2, t2v_size=(256, 144, 1)) -> None:
    """Through the page's graph, what tests/harness/runs.tiny_prompt does to the API prompt: the tiny
    models, zero text conditioning in place of each CLIP Text Encode (and no CLIP loader: no umT5 weights
    exist here), `steps` sampling steps, a small T2V latent. Nothing else of the loaded workflow changes."""
    page.evaluate(
        """([values, steps, t2v]) => {
          const g = window.app.graph;
          const set = (type, name, value) => {
            for (const n of g.nodes.filter(n => n.type === type)) {
              const w = (n.widgets || []).find(w => w.name === name);
              if (!w) throw new Error(`${type} has no widget ${name}`);
              w.value = value;
              w.callback?.(value);
            }
          };
          set('UNETLoader', 'unet_name', values.dit);
          set('VAELoader', 'vae_name', values.vae);
          set('LoraLoaderModelOnly', 'lora_name', values.lora);
          set('LoadVideo', 'file', values.clip);
          set('PatchVSR_Sampler', 'steps', steps);
          set('PatchVSR_LongVideo', 'steps', steps);
          set('KSampler', 'steps', steps);
          for (const [name, value] of Object.entries({width: t2v[0], height: t2v[1], length: t2v[2]}))
            set('EmptyHunyuanLatentVideo', name, value);
          for (const old of g.nodes.filter(n => n.type === 'CLIPTextEncode')) {
            const zero = window.LiteGraph.createNode('PatchVSRTest_ZeroTextConditioning');
            zero.pos = [old.pos[0], old.pos[1]];
            g.add(zero);
            for (const id of [...(old.outputs[0].links || [])]) {
              const link = g.links.get ? g.links.get(id) : g.links[id];
              zero.connect(0, g.getNodeById(link.target_id), link.target_slot);
            }
            g.remove(old);
          }
          for (const clip of g.nodes.filter(n => n.type === 'CLIPLoader')) g.remove(clip);
          g.setDirtyCanvas(true, true);
        }""",
        [
            {
                "dit": f"{DIT.name}.safetensors",
                "vae": f"{VAE.name}.safetensors",
                "lora": f"{DISTILL_LORA_NAME}.safetensors",
                "clip": INPUT_CLIP,
            },
            steps,
            list(t2v_size),
        ],
    )


def fit_view(page) -> None:
    """The whole graph on screen (the canvas's Fit View), for a screenshot that shows every node's output."""
    page.evaluate(
        """async () => {
          const g = window.app.graph, c = window.app.canvas;
          const cmd = window.app.extensionManager?.command;
          if (cmd) await cmd.execute('Comfy.Canvas.FitView');
          else c.ds.reset();
          g.setDirtyCanvas(true, true);
        }"""
    )


def press_run(page) -> None:
    page.locator(RUN_BUTTON).first.click()


@contextmanager
def quiet_page(page, size=(960, 600)):
    """While a long prompt runs: a small viewport and the Load Video preview paused, so software
    compositing in the headless browser takes little CPU from the server; the full size is back after."""
    full = page.viewport_size
    page.evaluate("() => document.querySelectorAll('video').forEach(v => { v.autoplay = false; v.pause(); })")
    page.set_viewport_size({"width": size[0], "height": size[1]})
    try:
        yield
    finally:
        page.set_viewport_size(full)


def wait_for_prompt(page, socket: Socket, timeout: float, poll: float = 0.5) -> tuple[str, str, dict]:
    """After Run: (prompt id, 'success' | 'error' | 'interrupted', the closing message's data). A prompt the
    server rejects never starts; the page's error dialog is then the message."""
    deadline = time.monotonic() + timeout
    prompt_id = None
    started = time.monotonic()
    while time.monotonic() < deadline:
        page.wait_for_timeout(poll * 1000)
        if prompt_id is None:
            found = socket.find("execution_start")
            if found:
                prompt_id = found[-1][1]["data"]["prompt_id"]
            elif time.monotonic() - started > 60:
                raise AssertionError(f"the prompt did not start; on screen: {visible_dialogs(page)}")
            continue
        for kind, status in (("execution_success", "success"), ("execution_error", "error")):
            found = socket.find(kind, prompt_id)
            if found:
                return prompt_id, status, found[-1][1]["data"]
        if socket.find("execution_interrupted", prompt_id):
            return prompt_id, "interrupted", {}
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")
