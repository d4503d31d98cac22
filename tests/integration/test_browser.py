"""Every shipped workflow run the way an artist runs it, on each frontend a host is tested with: the real
ComfyUI web page in headless Chromium, the workflow opened from the Templates dialog (ComfyUI lists the
pack's workflows/ under the pack's name), the models it names listed as missing with their download
addresses, the real Run button, the video waited for. The page converts the shipped file itself (widget
order, links, the pack's JS), so nothing of the test harness stands between the file and the server.

Frontends: each host's own comfyui-frontend-package (1.32 on the pinned host, 1.49 on 0.33) and, on 0.33, the
newest one on the registry, which .ci/bootstrap installs beside it and the server serves through
--front-end-root (what an artist gets who pip-installs the newest frontend).

Each workflow runs to its saved video once per host: on 0.33 from the newest frontend's page. 0.33's own
frontend does not repeat that work: its Run button must post exactly the prompt that the newest frontend's
page posted (the same work, already run to its video on this host), the run must start and the pack's JS must
show the partitioner's cost text for it, and the run is then stopped.

The 2K workflow runs the real tiny Wan VAE. The others' VAE goes through the CheapVAE test node (ComfyUI's
own VAE object, its encode and tiled decode, around a pooling network), set through the page like the tiny
models: what they check is the graph, the plan, the sampler and the video's exact size, and a random tiny
VAE's 4K pictures show nothing while its 4K encode and decode took about 160 s of CPU per workflow alone
and more than twice that beside the other host (most of CI's time). The real Wan VAE's encode and decode are
this 2K run's, the pixel proofs' (the trained tiny VAE, 2K) and test_vae_core's (against core's nodes), on
both hosts.

Screenshots and each run's timings (wall and CPU seconds per phase and per node) land in the server's output
folder under browser/."""

import json
import math
import re
import shutil
import time
from dataclasses import dataclass

import pytest
from harness.browser import (
    EXTENSION_COLOUR,
    Console,
    Socket,
    Timings,
    chromium,
    cpu_seconds,
    fit_view,
    frontend_version,
    load_template,
    minimised,
    missing_models,
    node_times,
    open_app,
    press_run,
    use_tiny_models,
    visible_dialogs,
    wait_for_prompt,
)
from harness.paths import HOST, REPO, WORK, newest_frontend
from harness.runs import INPUT_CLIP
from harness.server import ComfyServer
from harness.video import video_size

pytestmark = pytest.mark.integration
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
TARGETS = {"2K": (2560, 1440), "4K": (3840, 2160)}
# What the frontends say when a workflow names node types the server does not have.
MISSING_NODES = re.compile(r"missing node|nodes are missing|node types? (were )?not found", re.IGNORECASE)
CLIP_HW = (144, 256)  # the tests' input clip (conftest) and the T2V latent (harness.browser.use_tiny_models)
STEPS = 2
# The newest frontend first: its runs go to the video, and the host's own frontend then checks against them.
FRONTENDS = ("newest", "host") if HOST == "0.33" else ("host",)
# Workflow name -> the prompt its full run posted, on this host: what a later frontend's Run must post.
FULL_RUNS: dict[str, dict] = {}
# The workflows run with the real tiny VAE; the others through the CheapVAE test node (see above).
REAL_VAE = {"patchvsr_2k_from_video"}
# PatchVSR Long Video plans and samples inside one node: no partitioner or sampler nodes in its workflow.
LONG_VIDEO = "PatchVSR_LongVideo"


@dataclass
class Frontend:
    name: str  # "host" (the host's own frontend package) or "newest"
    server: ComfyServer


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend(request, server, tiny_models):
    if request.param == "host":
        yield Frontend("host", server)
        return
    from harness.runs import make_clip

    base = WORK / "pytest-server-newest-frontend"
    shutil.rmtree(base, ignore_errors=True)
    with ComfyServer(base, tiny_models, frontend=newest_frontend(), preview_method="latent2rgb") as srv:
        make_clip(srv.input_dir / INPUT_CLIP, frames=1)  # as the session server's (conftest)
        yield Frontend("newest", srv)


@pytest.fixture
def browser():
    # A fresh profile for every workflow, as an artist's first visit: the frontend keeps the open workflows
    # in the profile's storage and restores them when a page opens, asynchronously; on 0.33's frontend the
    # restored previous workflow replaced the loaded template, and the Run button ran that one (CI: the T2V
    # case saved a 4K video).
    with chromium() as b:
        yield b


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


def models_named(saved: dict) -> dict[str, tuple[str, str]]:
    """{file name: (models folder, download address)} from the loaders' `models` property in a workflow."""
    return {
        m["name"]: (m["directory"], m["url"]) for n in saved["nodes"] for m in n.get("properties", {}).get("models", [])
    }


def cost_widget(page) -> str:
    """The text the pack's JS shows on the partitioner node."""
    return page.evaluate(
        """() => window.app.graph.nodes.filter(n => n.type === 'PatchVSR_Partitioner')
            .map(n => (n.widgets || []).find(w => w.name === 'patchvsr_cost')?.value ?? '')[0]"""
    )


def run_line(settings: dict, counts: dict) -> tuple[str | None, int]:
    """The line the pack's JS adds for the connected sampler, with this run's patch evaluations counted by
    hand from the plan's counts, and the patches one run of the sampler evaluates (one row each at cfg 1).
    The long-video node shows no cost text (None); one chunk (the 1-frame clip) with its default shifted
    stitch counts the patches a 2-step shifted run of the sampler would."""
    if "PatchVSR_Sampler" not in settings:
        return None, counts["base"] + counts["final"]
    sampler, stitcher = settings["PatchVSR_Sampler"], settings["PatchVSR_Stitcher"]
    assert STEPS == 2  # a 2-step shifted run: the base grid, then the last step's grid
    per_run = {"weighted": STEPS * counts["weighted"], "average": STEPS * counts["weighted"],
               "naive": STEPS * counts["base"], "shifted": counts["base"] + counts["final"]}[stitcher["mode"]]  # fmt: skip
    total = per_run * (1 if sampler["cfg"] == 1 else 2)
    return f"{STEPS} steps, cfg {sampler['cfg']:g}, {stitcher['mode']} stitch: {total} patch", per_run


def check_plan_text(text: str, counts: dict) -> None:
    """The server's plan text against the counts made here by hand."""
    assert f"Base grid {counts['rows']} rows x {counts['cols']} columns = {counts['base']} patches" in text, text
    assert f"{counts['bridges']} bridging patches" in text and f"weighted / average {counts['weighted']};" in text
    assert f", {counts['final']} on the last step" in text, text
    assert "Memory estimate: DiT about" in text


def hf_page(url: str) -> str:
    """A Hugging Face file's page: newer frontends' Copy URL gives it rather than the file's download link."""
    return url.replace("/resolve/", "/blob/", 1)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflow_runs_in_the_browser(frontend, browser, workflow):
    server = frontend.server
    shots = server.output_dir / "browser"
    shots.mkdir(exist_ok=True)
    # A cold cache, as at an artist's first run: ComfyUI 0.33's default cache (RAM pressure) keeps node
    # outputs across prompts, so a graph an earlier test ran with the same inputs would come back cached,
    # with no sampling (no preview) to check and no partitioner text in this prompt's history (seen when
    # the same workflow ran twice).
    server.clear_cache()
    saved = json.loads(workflow.read_text())
    target = "4K" if "4k" in workflow.stem else "2K"
    counts = expected_counts(target)
    page = browser.new_page()
    console, socket = Console(), Socket(cpu=lambda: cpu_seconds(server.proc.pid))
    console.attach(page)
    socket.attach(page)
    timings = Timings(server.proc.pid, browser)
    record = {"host": HOST, "frontend": frontend.name, "workflow": workflow.stem}
    types = {str(n["id"]): n["type"] for n in saved["nodes"]}
    try:
        # 1. Open the page, and the workflow from the Templates dialog: every node type known, the pack's
        #    extension ran on each of its nodes, no missing-node dialog.
        open_app(page, server.url)
        record["version"] = frontend_version(page)
        timings.mark("page")
        nodes = load_template(page, workflow.stem, [(n["id"], n["type"]) for n in saved["nodes"]])
        timings.mark("template")
        unknown = [n["type"] for n in nodes if not n["known"] and n["type"] not in ("Note", "MarkdownNote")]
        assert not unknown, f"the frontend does not know these node types: {unknown}"
        pack_nodes = [n for n in nodes if n["type"].startswith("PatchVSR_")]
        assert pack_nodes and all(n["colour"] == EXTENSION_COLOUR for n in pack_nodes), pack_nodes
        assert not [d for d in visible_dialogs(page) if MISSING_NODES.search(d)], visible_dialogs(page)
        # 2. The Wan files the workflow names are not on this server: the page lists each in its folder, with
        #    the download address the workflow carries.
        wanted = models_named(saved)
        listed = missing_models(page, set(wanted))
        for name, (folder, url) in wanted.items():
            assert name in listed and listed[name][0] == folder, (name, listed)
            assert listed[name][1] in (url, hf_page(url)), (name, listed[name][1], url)
        timings.mark("missing_models")
        on_load = visible_dialogs(page)
        # 3. The tiny models and a short run, set through the page's graph; then the real Run button.
        cheap_vae = workflow.stem not in REAL_VAE
        record["vae"] = "cheap" if cheap_vae else "real"
        use_tiny_models(page, steps=STEPS, t2v_size=(CLIP_HW[1], CLIP_HW[0], 1), cheap_vae=cheap_vae)
        page.screenshot(path=str(shots / f"{frontend.name}_{workflow.stem}_loaded.png"))
        # The graph on the canvas is still the loaded template (no restored workflow took its place).
        kept = {(n["id"], n["type"]) for n in nodes if n["type"] not in ("CLIPTextEncode", "CLIPLoader")}
        shown = {tuple(n) for n in page.evaluate("() => window.app.graph.nodes.map(n => [n.id, n.type])")}
        assert kept <= shown, (workflow.stem, sorted(kept - shown))
        types.update({str(i): t for i, t in shown})
        settings = page.evaluate(
            """() => Object.fromEntries(window.app.graph.nodes.filter(n => ['PatchVSR_Sampler', 'PatchVSR_Stitcher'].includes(n.type))
                .map(n => [n.type, Object.fromEntries(n.widgets.map(w => [w.name, w.value]))]))"""
        )
        line, per_run = run_line(settings, counts)
        timings.mark("tiny_models")
        press_run(page)
        same_as = FULL_RUNS.get(workflow.stem)
        if same_as is None:
            shot = shots / f"{frontend.name}_{workflow.stem}.png"
            outputs, prompt = full_run(page, server, socket, nodes, line, per_run, on_load, shot)
            timings.mark("run")
        else:
            prompt = started_run(page, server, socket, same_as, counts, line)
            timings.mark("started_run")
        record["run"] = "full" if same_as is None else "started, same prompt as the full run"
        # The cost widget is display only: never sent with the prompt (it would change the partitioner's
        # inputs, and so rerun the chain, whenever the sampler's steps change).
        assert all("patchvsr_cost" not in n["inputs"] for n in prompt.values()), prompt
        wrapped = [k for k, n in prompt.items() if n["class_type"] == "PatchVSRTest_CheapVAE"]
        assert bool(wrapped) == cheap_vae, (cheap_vae, wrapped)
    finally:
        page.close()
        record["phases"] = timings.phases()
        record["console_messages"] = len(console.messages)
        record["binary_frame_types"] = sorted({b[2] for b in socket.binary})
        if socket.find("execution_start"):
            record["nodes"] = node_times(socket, socket.find("execution_start")[-1][1]["data"]["prompt_id"], types)
        (shots / f"{frontend.name}_{workflow.stem}_timings.json").write_text(json.dumps(record, indent=1))
    # 4. Nothing the pack's JS did made the frontend warn (legacy imports, deprecated graph or widget APIs).
    caused = [(m.level, m.text[:300], m.scripts[:4]) for m in console.caused_by_pack()]
    assert not caused, caused
    if same_as is not None:
        return
    # 5. The saved video, as the server recorded it: exactly the preset frame.
    (video,) = [
        server.output_dir / item.get("subfolder", "") / item["filename"]
        for out in outputs.values()
        for items in out.values()
        if isinstance(items, list)
        for item in items
        if isinstance(item, dict) and item.get("type") == "output" and item.get("filename", "").endswith(".mp4")
    ]
    width, height, frames = video_size(video)
    assert (width, height) == TARGETS[target] and frames >= 1
    # 6. The plan's text in the prompt's history against the counts made here by hand.
    if line is not None:
        partitioner = next(n["id"] for n in nodes if n["type"] == "PatchVSR_Partitioner")
        check_plan_text(outputs[str(partitioner)]["text"][0], counts)
    FULL_RUNS[workflow.stem] = prompt


def posted_prompt(page, socket: Socket, timeout_ms: int = 60_000) -> dict:
    """The API prompt the page's Run button posted, as class_type and inputs per node id."""
    for _ in range(timeout_ms // 100):
        if socket.posted:
            break
        page.wait_for_timeout(100)
    assert socket.posted, f"the page posted no prompt; on screen: {visible_dialogs(page)}"
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in socket.posted[-1]["prompt"].items()}


def full_run(page, server, socket, nodes, line, per_run, on_load, shot) -> tuple[dict, dict]:
    """The run to its saved video: success, the live preview while the sampler ran, the cost text on the
    partitioner (the server's plan text and the JS's line for the connected sampler), the patches the
    sampler reported running. Returns the prompt's /history outputs and the posted prompt."""
    try:
        with minimised(page):
            prompt_id, status, data = wait_for_prompt(page, socket, timeout=2400)
    except (AssertionError, TimeoutError):
        server.interrupt()  # the next test's prompt must not queue behind this one
        raise
    prompt = posted_prompt(page, socket)
    fit_view(page)
    page.wait_for_timeout(1500)  # the output node's video preview
    page.screenshot(path=str(shot))
    assert status == "success", json.dumps(data)[:3000]
    # No validation dialog, and the live preview reached the page while the sampler ran.
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
    assert previews, f"no preview image over the websocket while the sampler ran ({len(socket.binary)} binary frames)"
    outputs = server.wait_for_history(prompt_id)["outputs"]
    if line is not None:
        partitioner = next(n["id"] for n in nodes if n["type"] == "PatchVSR_Partitioner")
        shown = cost_widget(page)
        assert outputs[str(partitioner)]["text"][0] in shown and line in shown, shown
    ran = max(
        m["data"]["max"] for _, m in socket.find("progress", prompt_id) if m["data"].get("node") == str(sampler_id)
    )
    assert ran == per_run, (ran, per_run)  # the sampler's progress counts patches (one row each at cfg 1)
    return outputs, prompt


def started_run(page, server, socket, same_as, counts, line, timeout: float = 600) -> dict:
    """The run of a workflow that a full run on this host already took to its video: the page must post
    exactly that run's prompt, the run must start, and the pack's JS must show the partitioner's cost text
    for it (the server's plan text, against the counts made here, and the line for the connected sampler;
    the long-video node, which shows none, must start running). Then it is stopped: the rest would be the
    full run's work again. Returns the posted prompt."""
    prompt = posted_prompt(page, socket)
    differ = sorted(k for k in prompt.keys() | same_as.keys() if prompt.get(k) != same_as.get(k))
    assert not differ, {k: (prompt.get(k), same_as.get(k)) for k in differ}
    long_video = [k for k, v in prompt.items() if v["class_type"] == LONG_VIDEO]

    def started() -> bool:
        if line is None:
            return any(m["data"].get("node") in long_video for _, m in socket.find("executing"))
        return line in (cost_widget(page) or "")

    deadline = time.monotonic() + timeout
    while not started():
        ended = [
            m for kind in ("execution_error", "execution_interrupted", "execution_success") for m in socket.find(kind)
        ]
        assert not ended, f"the run ended before it showed it started: {ended}"
        assert time.monotonic() < deadline, f"no cost text or running long-video node after {timeout}s"
        page.wait_for_timeout(200)
    shown = cost_widget(page)
    server.interrupt()
    _, status, data = wait_for_prompt(page, socket, timeout=timeout)
    assert status in ("interrupted", "success"), json.dumps(data)[:3000]
    if line is not None:
        check_plan_text(shown, counts)
    return prompt
