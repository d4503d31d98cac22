"""The real ComfyUI web frontend in headless Chromium (Debian's package, installed by .ci/bootstrap), driven
by Playwright: load a shipped workflow from the Templates dialog, read the models the frontend reports
missing, point the workflow at the tiny models through the page's own graph, press the real Run button and
follow the page's websocket and console.

No browser is downloaded: Playwright drives the system's /usr/bin/chromium. The flags keep it off the
network (this machine reaches none) and out of any profile but a fresh one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

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
# The Run button: frontends 1.49 (ComfyUI 0.33) and newer mark it with a test id, 1.32 (pinned) names the
# split button's main half "Run".
RUN_BUTTON = '[data-testid="queue-button"], button.p-splitbutton-button[aria-label="Run"]'
# The sidebar button that opens the Templates dialog (every tested frontend), and a workflow's card there.
TEMPLATES_BUTTON = ".templates-tab-button"
TEMPLATE_CARD = '[data-testid="template-workflow-{name}"]'
# Where the frontend lists the models a loaded workflow names but the server lacks: a dialog on 1.32; a notice
# whose "View details" opens the workflow's issues panel on 1.49 and newer.
MISSING_MODELS_DIALOG = ".comfy-missing-models"
MISSING_MODEL_ROWS = '[data-testid="missing-model-importable-rows"] > div'
# Dialogs and error overlays the frontend shows for missing nodes and for a prompt the server rejects.
DIALOGS = ".p-dialog, [data-testid='error-overlay-see-errors']"
# Settings of an artist who has used ComfyUI before (no first-run templates dialog over the canvas), and a
# canvas drawn at most twice a second without the minimap: software rendering in a headless browser
# otherwise takes a core from the server on a 2-core machine.
SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.MaximumFps": 2, "Comfy.Minimap.Visible": False}


@dataclass
class Browser:
    """A Playwright browser context and the profile folder that identifies its processes."""

    context: object
    profile: str

    def new_page(self):
        return self.context.new_page()

    def cpu_seconds(self) -> float:
        """CPU time used so far by this browser's processes (found by their profile folder)."""
        return sum(cpu_seconds(pid) for pid in _pids_with_arg(f"--user-data-dir={self.profile}"))


@contextmanager
def chromium(viewport=(2400, 1350)):
    """A headless Chromium with a fresh profile; yields a Browser. The page may read the clipboard: the
    frontends' Copy URL buttons put the missing models' download addresses there."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `bash .ci/bootstrap` installs Debian's chromium package")
    with tempfile.TemporaryDirectory(prefix="patchvsr-chromium-") as fresh, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            fresh, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )  # fmt: skip
        try:
            ctx.grant_permissions(["clipboard-read", "clipboard-write"])
            yield Browser(ctx, fresh)
        finally:
            ctx.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids_with_arg(arg: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and arg.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # the process ended while the list was read
            pass
    return pids


@dataclass
class Socket:
    """What the page's websocket received: JSON messages and binary frames (previews) in order, and the
    prompts the page posted. `cpu` (optional) is sampled at every `executing` message, so each node's CPU
    time can be read from the differences."""

    messages: list = field(default_factory=list)  # (seconds since start, parsed JSON message)
    binary: list = field(default_factory=list)  # (seconds since start, byte length, event type)
    posted: list = field(default_factory=list)  # bodies of the page's POST /prompt requests
    node_cpu: list = field(default_factory=list)  # (node id or None at the end, seconds since start, cpu())
    cpu: Callable[[], float] | None = None
    start: float = field(default_factory=time.monotonic)

    def attach(self, page) -> None:
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))
        page.on("request", self._request)

    def _request(self, request) -> None:
        if request.method == "POST" and urlparse(request.url).path.endswith("/prompt"):
            self.posted.append(request.post_data_json)

    def _frame(self, payload) -> None:
        t = time.monotonic() - self.start
        if isinstance(payload, (bytes, bytearray)):
            # ComfyUI's binary frames start with a big-endian uint32 event type (1 = preview image).
            self.binary.append((t, len(payload), int.from_bytes(payload[:4], "big")))
            return
        message = json.loads(payload)
        self.messages.append((t, message))
        if self.cpu is not None and message.get("type") == "executing":
            self.node_cpu.append((message["data"].get("node"), t, self.cpu()))

    def find(self, kind: str, prompt_id: str | None = None) -> list[tuple[float, dict]]:
        return [
            (t, m)
            for t, m in self.messages
            if m.get("type") == kind and (prompt_id is None or m.get("data", {}).get("prompt_id") == prompt_id)
        ]


@dataclass
class ConsoleMessage:
    level: str  # log, info, warning, error, ...
    text: str
    scripts: list[str]  # URL paths of the scripts on the call stack, innermost first


@dataclass
class Console:
    """The page's console messages with the scripts on their call stacks (the Chrome DevTools Protocol's
    Runtime domain, which Playwright's own console events lack), so a warning can be traced to the script
    that caused it."""

    messages: list[ConsoleMessage] = field(default_factory=list)

    def attach(self, page) -> None:
        """Before the page opens: the extension's module-level code runs while the app starts."""
        cdp = page.context.new_cdp_session(page)
        cdp.on("Runtime.consoleAPICalled", self._called)
        cdp.send("Runtime.enable")

    def _called(self, event: dict) -> None:
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in event.get("args", []))
        frames = (event.get("stackTrace") or {}).get("callFrames", [])
        self.messages.append(ConsoleMessage(event["type"], text, [urlparse(f["url"]).path for f in frames]))

    def caused_by_pack(self) -> list[ConsoleMessage]:
        """Warnings and errors the pack's JS caused: its script is on the stack, or a legacy module under
        /scripts/ logged them as it loaded (those shims run only when an extension imports them, and the
        pack's is the only extension script these servers serve)."""
        return [m for m in self.messages if m.level in ("warning", "error", "assert") and _from_pack(m)]


def _from_pack(message: ConsoleMessage) -> bool:
    if any(s.startswith(f"/extensions/{PACK}/") for s in message.scripts):
        return True
    return bool(message.scripts) and message.scripts[0].startswith("/scripts/")


@dataclass
class Timings:
    """Where a browser test's time goes, phase by phase: wall seconds and the CPU seconds of the server, the
    browser and the test process (CPU time stays comparable on a machine that others load too)."""

    server_pid: int
    browser: Browser
    marks: list = field(default_factory=list)  # (phase that ended, wall, server CPU, browser CPU, test CPU)

    def __post_init__(self) -> None:
        self.mark("start")

    def mark(self, phase: str) -> None:
        self.marks.append(
            (phase, time.monotonic(), cpu_seconds(self.server_pid), self.browser.cpu_seconds(), time.process_time())
        )

    def phases(self) -> dict[str, dict[str, float]]:
        return {
            b[0]: {k: round(b[i] - a[i], 2) for i, k in enumerate(("wall", "server_cpu", "browser_cpu", "test_cpu"), 1)}
            for a, b in zip(self.marks, self.marks[1:])
        }


def node_times(socket: Socket, prompt_id: str, types: dict[str, str]) -> list[dict]:
    """Each executed node's wall and server CPU seconds, from the `executing` messages of `prompt_id` (a node
    runs from its message to the next one)."""
    start = min((t for t, m in socket.find("execution_start", prompt_id)), default=None)
    marks = [(node, t, cpu) for node, t, cpu in socket.node_cpu if start is not None and t >= start]
    return [
        {"node": node, "type": types.get(str(node), "?"), "wall": round(t1 - t0, 2), "server_cpu": round(c1 - c0, 2)}
        for (node, t0, c0), (_, t1, c1) in zip(marks, marks[1:])
        if node is not None
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
    # LiteGraph reports each deprecated property once per page; every read is reported from here on, so a
    # deprecated read by the pack still shows when the frontend itself made the same one first.
    page.evaluate("() => { if (window.LiteGraph) window.LiteGraph.alwaysRepeatWarnings = true; }")


def frontend_version(page) -> str:
    return page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'")


def visible_dialogs(page) -> list[str]:
    """Texts of the dialogs and error overlays on screen."""
    return page.evaluate(
        """sel => Array.from(document.querySelectorAll(sel))
            .filter(d => d.offsetParent !== null || d.getClientRects().length > 0)
            .map(d => d.innerText.trim().slice(0, 400))""",
        DIALOGS,
    )


def load_template(page, name: str, nodes: list[tuple[int, str]], timeout_ms: int = 120_000) -> list[dict]:
    """Loads the pack's workflow `name` as an artist does: the sidebar's Templates button, the pack's name
    among the template sources (ComfyUI lists a custom node pack's workflows/ under the pack's name), the
    workflow's card. Waits until the graph holds the workflow's `nodes` ((id, type) pairs) and returns the
    loaded nodes as {id, type, known, colour}."""
    page.locator(TEMPLATES_BUTTON).click()
    page.get_by_role("dialog").get_by_text(PACK, exact=True).click()
    page.locator(TEMPLATE_CARD.format(name=name)).click()
    page.wait_for_function(
        """want => want.every(([id, type]) => window.app.graph.getNodeById(id)?.type === type)""",
        arg=[list(n) for n in nodes],
        timeout=timeout_ms,
    )
    return page.evaluate(
        """() => {
          const types = window.LiteGraph.registered_node_types;
          return window.app.graph.nodes.map(n => ({id: n.id, type: n.type, known: n.type in types, colour: n.color}));
        }"""
    )


def missing_models(page, expect: set[str], timeout_ms: int = 60_000) -> dict[str, tuple[str, str]]:
    """The models the frontend reports missing after a workflow loaded, read as an artist reads them:
    {file name: (models folder, download address)}, the address being what the row's Copy URL button puts on
    the clipboard. Frontend 1.32 lists them in a dialog, closed here after reading as an artist closes it;
    1.49 and newer show a notice whose View details opens the workflow's issues panel. The frontend checks a
    workflow's models after it loads, so the list is read once it names every file in `expect` (or at the
    timeout, as it is)."""
    dialog = page.locator(MISSING_MODELS_DIALOG)
    notice = page.get_by_role("button", name="View details")
    dialog.or_(notice).first.wait_for(timeout=timeout_ms)
    in_dialog = dialog.count() > 0
    if in_dialog:
        rows = dialog.locator("li[role=option]")
    else:
        notice.first.click()
        rows = page.locator(MISSING_MODEL_ROWS)

    def name_and_folder(text: str) -> tuple[str, str]:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if in_dialog:  # "folder / name"
            folder, name = lines[0].split(" / ", 1)
            return name, folder
        return lines[0], lines[1]  # name, then folder

    deadline = time.monotonic() + timeout_ms / 1000
    while not expect <= {name_and_folder(t)[0] for t in rows.all_inner_texts()} and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    found = {}
    for i in range(rows.count()):
        name, folder = name_and_folder(rows.nth(i).inner_text())
        found[name] = (folder, _copied_url(page, rows.nth(i)))
    if in_dialog:
        page.locator(".p-dialog", has=dialog).locator(".p-dialog-close-button").click()
        dialog.wait_for(state="detached")
    return found


def _copied_url(page, row, timeout: float = 10) -> str:
    """Presses the row's Copy URL button and reads the clipboard (emptied first: a stale address must not
    pass for this row's)."""
    page.evaluate("() => navigator.clipboard.writeText('')")
    row.get_by_role("button", name="Copy URL").click()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = page.evaluate("() => navigator.clipboard.readText()")
        if text:
            return text
        page.wait_for_timeout(100)
    raise TimeoutError("Copy URL put nothing on the clipboard")


def use_tiny_models(page, steps: int = 2, t2v_size=(256, 144, 1), cheap_vae: bool = False) -> None:
    """Through the page's graph, what tests/harness/runs.tiny_prompt does to the API prompt: the tiny
    models, zero text conditioning in place of each CLIP Text Encode (and no CLIP loader: no umT5 weights
    exist here), `steps` sampling steps, a small T2V latent. With `cheap_vae`, the VAE loader's output goes
    through the PatchVSRTest_CheapVAE node (ComfyUI's own VAE object, encode and tiled decode, around a
    pooling network): for runs where the video's size and frame count matter and its pictures do not. Nothing
    else of the loaded workflow changes."""
    page.evaluate(
        """([values, steps, t2v, cheap]) => {
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
          if (cheap) for (const loader of g.nodes.filter(n => n.type === 'VAELoader')) {
            const wrap = window.LiteGraph.createNode('PatchVSRTest_CheapVAE');
            wrap.pos = [loader.pos[0], loader.pos[1] + 120];
            g.add(wrap);
            for (const id of [...(loader.outputs[0].links || [])]) {
              const link = g.links.get ? g.links.get(id) : g.links[id];
              wrap.connect(0, g.getNodeById(link.target_id), link.target_slot);
            }
            loader.connect(0, wrap, 0);
          }
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
            cheap_vae,
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
def minimised(page):
    """While a long prompt runs: the browser window minimised, as an artist leaves it during a render. A
    minimised page draws no frames, so the frontend's animations and render loops stop (they kept about a
    sixth of a core busy with software rendering, taken from the server on a 2-core machine), while its
    websocket messages are still handled: the executed nodes' outputs (the cost text) and the previews
    arrive as before. The window is restored after."""
    cdp = page.context.new_cdp_session(page)
    window = cdp.send("Browser.getWindowForTarget")["windowId"]
    cdp.send("Browser.setWindowBounds", {"windowId": window, "bounds": {"windowState": "minimized"}})
    try:
        yield
    finally:
        cdp.send("Browser.setWindowBounds", {"windowId": window, "bounds": {"windowState": "normal"}})
        cdp.detach()


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
