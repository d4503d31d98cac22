"""Every shipped workflow run the way an artist runs it: the real ComfyUI web page (the host's own
comfyui-frontend-package) in headless Chromium, the workflow loaded from the pack's templates, the real Run
button, the video waited for. This replaces running the same files through the HTTP API: the page converts
them itself (widget order, links, the pack's JS), so nothing of the test harness stands between the shipped
file and the server. Screenshots land in the server's output folder under browser/."""

import json
import math
import re

import pytest
from harness.browser import (
    EXTENSION_COLOUR,
    Socket,
    chromium,
    fit_view,
    load_template,
    open_app,
    press_run,
    quiet_page,
    use_tiny_models,
    visible_dialogs,
    wait_for_prompt,
)
from harness.paths import REPO
from harness.video import video_size

pytestmark = pytest.mark.integration
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
TARGETS = {"2K": (2560, 1440), "4K": (3840, 2160)}
# What the frontends say when a workflow names node types the server does not have.
MISSING_NODES = re.compile(r"missing node|nodes are missing|node types? (were )?not found", re.IGNORECASE)
CLIP_HW = (144, 256)  # the tests' input clip (conftest) and the T2V latent (harness.browser.use_tiny_models)
STEPS = 2
# PatchVSR Long Video plans and samples inside one node: no partitioner or sampler nodes in its workflow.
LONG_VIDEO = "PatchVSR_LongVideo"


def expected_counts(target: str) -> dict:
    """The partitioner's counts for the tests' 1-frame input, counted here by hand rather than by the pack:
    Wan 2.1's 480 x 832 px patches tile the frame in ceil(H / 480) rows and ceil(W / 832) columns; bridges
    sit on every seam between two of them and on every four-patch intersection; the shifted stitch's last
    step runs one cell more per axis (cells centred on the base borders), the step before it the base grid."""
    w, h = TARGETS[target]
    r, c = math.ceil(h / 480), math.ceil(w / 832)
    bridges = r * (c - 1) + (r - 1) * c + (r - 1) * (c - 1)
    return {"rows": r, "cols": c, "base": r * c, "bridges": bridges, "weighted": r * c + bridges,
            "final": (r + 1) * (c + 1)}  # fmt: skip


def cost_widget(page) -> str:
    """The text the pack's JS shows on the partitioner node."""
    return page.evaluate(
        """() => window.app.graph.nodes.filter(n => n.type === 'PatchVSR_Partitioner')
            .map(n => (n.widgets || []).find(w => w.name === 'patchvsr_cost')?.value ?? '')[0]"""
    )


@pytest.fixture
def browser():
    # A fresh profile for every workflow, as an artist's first visit: the frontend keeps the open workflows
    # in the profile's storage and restores them when a page opens, asynchronously; on 0.33's frontend the
    # restored previous workflow replaced the loaded template, and the Run button ran that one (CI: the T2V
    # case saved a 4K video).
    with chromium() as ctx:
        yield ctx


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflow_runs_in_the_browser(server, browser, workflow):
    shots = server.output_dir / "browser"
    shots.mkdir(exist_ok=True)
    # A cold cache, as at an artist's first run: ComfyUI 0.33's default cache (RAM pressure) keeps node
    # outputs across prompts, so a graph an earlier test ran with the same inputs would come back cached,
    # with no sampling (no preview) to check and no partitioner text in this prompt's history (seen when
    # the same workflow ran twice).
    server.clear_cache()
    page = browser.new_page()
    socket = Socket()
    socket.attach(page)
    try:
        # 1. Open the page and load the template: every node type known, the pack's extension ran on each
        #    of its nodes, no missing-node dialog.
        open_app(page, server.url)
        nodes = load_template(page, workflow.stem)
        unknown = [n["type"] for n in nodes if not n["known"] and n["type"] not in ("Note", "MarkdownNote")]
        assert not unknown, f"the frontend does not know these node types: {unknown}"
        pack_nodes = [n for n in nodes if n["type"].startswith("PatchVSR_")]
        assert pack_nodes and all(n["colour"] == EXTENSION_COLOUR for n in pack_nodes), pack_nodes
        # A missing-model notice may show: the workflow names the artist's Wan files, not the tiny models.
        on_load = visible_dialogs(page)
        assert not [d for d in on_load if MISSING_NODES.search(d)], on_load
        # 2. The tiny models and a short run, set through the page's graph; then the real Run button.
        use_tiny_models(page, steps=STEPS, t2v_size=(CLIP_HW[1], CLIP_HW[0], 1))
        page.screenshot(path=str(shots / f"{workflow.stem}_loaded.png"))
        # The graph on the canvas is still the loaded template (no restored workflow took its place).
        kept = {(n["id"], n["type"]) for n in nodes if n["type"] not in ("CLIPTextEncode", "CLIPLoader")}
        shown = {tuple(n) for n in page.evaluate("() => window.app.graph.nodes.map(n => [n.id, n.type])")}
        assert kept <= shown, (workflow.stem, sorted(kept - shown))
        press_run(page)
        try:
            with quiet_page(page):
                prompt_id, status, data = wait_for_prompt(page, socket, timeout=2400)
        except (AssertionError, TimeoutError):
            server.interrupt()  # the next test's prompt must not queue behind this one
            raise
        fit_view(page)
        page.wait_for_timeout(1500)  # the output node's video preview
        page.screenshot(path=str(shots / f"{workflow.stem}.png"))
        assert status == "success", json.dumps(data)[:3000]
        # 3. No validation dialog, and the live preview reached the page while the sampler ran.
        new = [d for d in visible_dialogs(page) if d not in on_load]
        assert not new, new
        sampler_id = next(n["id"] for n in nodes if n["type"] in ("PatchVSR_Sampler", LONG_VIDEO))
        runs = [t for t, m in socket.find("executing", prompt_id) if m["data"].get("node") is not None]
        starts = {m["data"]["node"]: t for t, m in socket.find("executing", prompt_id)}
        cached = [m["data"].get("nodes") for _, m in socket.find("execution_cached", prompt_id)]
        assert str(sampler_id) in starts, f"the sampler {sampler_id} never ran; cached: {cached}"
        begin = starts[str(sampler_id)]
        end = min((t for t in runs if t > begin), default=float("inf"))
        previews = [b for b in socket.binary if begin <= b[0] <= end]
        assert previews, (
            f"no preview image over the websocket while the sampler ran ({len(socket.binary)} binary frames in all)"
        )
        shown = cost_widget(page)
        # The cost widget is display only: never sent with the prompt (it would change the partitioner's
        # inputs, and so rerun the chain, whenever the sampler's steps change).
        sent = page.evaluate(
            """async () => Object.values((await window.app.graphToPrompt()).output)
                .filter(n => n.class_type === 'PatchVSR_Partitioner').map(n => Object.keys(n.inputs))"""
        )
        assert all("patchvsr_cost" not in keys for keys in sent), sent
        settings = page.evaluate(
            """() => Object.fromEntries(window.app.graph.nodes.filter(n => ['PatchVSR_Sampler', 'PatchVSR_Stitcher'].includes(n.type))
                .map(n => [n.type, Object.fromEntries(n.widgets.map(w => [w.name, w.value]))]))"""
        )
    finally:
        page.close()
    # 4. The saved video, as the server recorded it: exactly the preset frame.
    outputs = server.wait_for_history(prompt_id)["outputs"]
    (video,) = [
        server.output_dir / item.get("subfolder", "") / item["filename"]
        for out in outputs.values()
        for items in out.values()
        if isinstance(items, list)
        for item in items
        if isinstance(item, dict) and item.get("type") == "output" and item.get("filename", "").endswith(".mp4")
    ]
    width, height, frames = video_size(video)
    target = "4K" if "4k" in workflow.stem else "2K"
    assert (width, height) == TARGETS[target] and frames >= 1
    n = expected_counts(target)
    if any(node["type"] == LONG_VIDEO for node in nodes):
        # One chunk (the 1-frame clip), the default shifted stitch: its one progress bar counts the patches a
        # 2-step shifted run of the sampler would (the base grid, then the last step's grid).
        ran = max(
            m["data"]["max"] for _, m in socket.find("progress", prompt_id) if m["data"].get("node") == str(sampler_id)
        )
        assert ran == n["base"] + n["final"], (ran, n)
        return
    # 5. The plan's cost against the counts made here by hand: the server's text, the JS total for the
    #    connected sampler's steps, cfg and stitch, and the patches the sampler reported running.
    partitioner = next(n["id"] for n in nodes if n["type"] == "PatchVSR_Partitioner")
    text = outputs[str(partitioner)]["text"][0]
    assert f"Base grid {n['rows']} rows x {n['cols']} columns = {n['base']} patches" in text, text
    assert f"{n['bridges']} bridging patches" in text and f"weighted / average {n['weighted']};" in text, text
    assert f", {n['final']} on the last step" in text, text
    assert "Memory estimate: DiT about" in text
    sampler, stitcher = settings["PatchVSR_Sampler"], settings["PatchVSR_Stitcher"]
    assert STEPS == 2  # a 2-step shifted run: the base grid, then the last step's grid
    per_run = {"weighted": STEPS * n["weighted"], "average": STEPS * n["weighted"], "naive": STEPS * n["base"],
               "shifted": n["base"] + n["final"]}[stitcher["mode"]]  # fmt: skip
    total = per_run * (1 if sampler["cfg"] == 1 else 2)
    assert (
        text in shown and f"{STEPS} steps, cfg {sampler['cfg']:g}, {stitcher['mode']} stitch: {total} patch" in shown
    ), shown
    ran = max(
        m["data"]["max"] for _, m in socket.find("progress", prompt_id) if m["data"].get("node") == str(sampler_id)
    )
    assert ran == per_run, (ran, per_run)  # the sampler's progress counts patches (one row each at cfg 1)
