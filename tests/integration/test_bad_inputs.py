"""The bad-input matrix through the real server, generated from the pack's own node schemas (/object_info).

For every pack node and widget: values below min and above max and of the wrong type, combo values outside
their list (all refused at queue time, which costs milliseconds), and values at min and max (accepted at
queue time; the cheap nodes also run with them on tiny shapes, to success or to an error naming the input).
Then every file input missing, empty, truncated, not safetensors and of another model; plans, latents,
contexts and adapters mismatched between nodes; a cancel during each long node. Every case checks that the
answer names the input, that the server still answers /object_info, and that no file in output/ or models/
was overwritten or left half written; each group ends with a good prompt that must run. One shared server;
the number of cases and the time are written to the server's folder (bad_input_matrix.json) and the log.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from harness.paths import REPO
from harness.runs import tiny_prompt
from harness.tiny_models import ADAPTERS, DIT, DIT_22, LORA_NAME, VAE
from harness.workflow import override
from test_validation import error_text, small

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)
PACK = "PatchVSR_"
BAD_TYPE = {"INT": "twelve", "FLOAT": "a lot"}  # int()/float() of these fail at queue time
HALF_WRITTEN = (".tmp", ".part", ".partial")


def node_id(prompt: dict, class_type: str) -> str:
    return next(k for k, n in prompt.items() if n["class_type"] == class_type)


def widgets(info: dict):
    """(name, kind, options) of every widget of a node, from its /object_info entry."""
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(spec[0], list):
                yield name, "COMBO", opts | {"options": spec[0]}
            elif spec[0] in ("INT", "FLOAT", "COMBO", "BOOLEAN", "STRING"):
                yield name, spec[0], opts


def bad_values(kind: str, opts: dict) -> list[tuple[str, object]]:
    """(what, value) the queue must refuse."""
    if kind in ("INT", "FLOAT"):
        step = opts.get("step", 1) if kind == "INT" else 0.5
        out = [("wrong type", BAD_TYPE[kind])]
        if "min" in opts:
            out.append(("below min", opts["min"] - step))
        if "max" in opts:
            out.append(("above max", opts["max"] + step))
        return out
    if kind == "COMBO":
        return [("not in list", "no-such-option.safetensors"), ("wrong type", 7)]
    return []  # BOOLEAN and STRING convert anything; the nodes check strings when they run


def boundary_values(kind: str, opts: dict) -> list[tuple[str, object]]:
    return [(k, opts[k]) for k in ("min", "max") if kind in ("INT", "FLOAT") and k in opts]


class Files:
    """(size, mtime) of every file under output/ and the model folders: nothing may change or be half written."""

    def __init__(self, roots: list[Path]):
        self.roots = roots
        self.before = self.scan()

    def scan(self) -> dict[str, tuple[int, int]]:
        seen = {}
        for root in self.roots:
            for p in root.rglob("*"):
                if p.is_file():
                    st = p.stat()
                    seen[str(p)] = (st.st_size, st.st_mtime_ns)
        return seen

    def check(self, case: str) -> None:
        now = self.scan()
        changed = [p for p, v in self.before.items() if now.get(p, v) != v]
        assert not changed, f"{case}: overwrote {changed}"
        half = [p for p in now if p.endswith(HALF_WRITTEN) or (p not in self.before and now[p][0] == 0)]
        assert not half, f"{case}: left half-written files {half}"
        self.before = now  # new files (a saved video of a good run) are kept from now on


@pytest.fixture(scope="module")
def matrix(server, object_info, tiny_models, request):
    """The shared state of the matrix: bad files in the server's own models folder, the file snapshot and
    the case count; writes the report at the end."""
    models = server.base_dir / "models"
    write_bad_files(models, tiny_models)
    data = server.base_dir / "train_data"
    from harness.runs import make_clip

    make_clip(data / "clip.mp4", width=64, height=48, frames=5)
    state = {
        "files": Files([server.output_dir, models, tiny_models]),
        "cases": 0,
        "good_runs": 0,
        "start": time.monotonic(),
        "data": data,
        "seed": 100,
    }
    yield state
    seconds = round(time.monotonic() - state["start"], 1)
    report = {"cases": state["cases"], "good_runs": state["good_runs"], "seconds": seconds}
    (server.base_dir / "bad_input_matrix.json").write_text(json.dumps(report))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"bad-input matrix: {report}")


def write_bad_files(models: Path, tiny: Path) -> None:
    """Damaged and foreign files under the server's base models folder (not the shared tiny models)."""
    import torch
    from safetensors.torch import save_file

    lora_src = (tiny / "loras" / f"{LORA_NAME}.safetensors").read_bytes()
    adapter_src = (tiny / "patchvsr" / f"{ADAPTERS['a']}.safetensors").read_bytes()
    for folder, src in (("loras", lora_src), ("patchvsr", adapter_src)):
        d = models / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / "bad_empty.safetensors").write_bytes(b"")
        (d / "bad_truncated.safetensors").write_bytes(src[: len(src) // 2])
        (d / "bad_text.safetensors").write_bytes(b"this is a README, not a safetensors file\n" * 4)
    # A LoRA of another model family (SD1.5's key names): ComfyUI would skip every key and do nothing.
    sd = {f"lora_unet_down_blocks_0_attentions_0_proj_in.lora_{k}.weight": torch.zeros(4, 4) for k in ("up", "down")}
    save_file(sd, str(models / "loras" / "bad_sd15_lora.safetensors"))
    shutil.copy(tiny / "diffusion_models" / f"{DIT.name}.safetensors", models / "loras" / "bad_not_a_lora.safetensors")
    shutil.copy(tiny / "loras" / f"{LORA_NAME}.safetensors", models / "patchvsr" / "bad_plain_lora.safetensors")


def count(matrix, server, case: str) -> None:
    """After every case: the server answers and nothing on disk changed."""
    matrix["cases"] += 1
    # The per-node form of /object_info: the full listing costs a second per call on a loaded CI machine;
    # each test's good prompt is built from the full one.
    assert PACK + "Sampler" in server.get(f"/object_info/{PACK}Sampler"), f"{case}: /object_info lost the pack"
    matrix["files"].check(case)


def cheap(object_info) -> dict:
    """The small workflow at scale 1 (one patch, no bridges), one step, cfg 1: the whole graph in a second."""
    prompt = override(small(object_info), "PatchVSR_Partitioner", scale=1.0)
    return override(prompt, "PatchVSR_Sampler", steps=1, cfg=1.0)


def good_run(matrix, server, object_info) -> None:
    assert server.object_info().keys() >= object_info.keys(), "/object_info lost nodes"
    matrix["seed"] += 1
    prompt = override(cheap(object_info), "PatchVSR_Sampler", seed=matrix["seed"])
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:2000]
    matrix["good_runs"] += 1
    matrix["files"].check("good prompt")


def rejection_names(server, prompt: dict, node: str, name: str) -> str:
    """Submits `prompt`, which must be refused at queue time with an error on `node` naming `name`."""
    prompt_id, body = server.submit(prompt)
    assert prompt_id is None, f"{name}: queued, expected a queue-time refusal"
    errors = body.get("node_errors", {}).get(node, {}).get("errors", [])
    text = " ".join(f"{e.get('details', '')} {e.get('message', '')}" for e in errors)
    named = [e for e in errors if (e.get("extra_info") or {}).get("input_name") == name or name in e.get("details", "")]
    assert named, f"{name}: refused without naming it: {json.dumps(body)[:1500]}"
    return text


def full_prompt(object_info) -> dict:
    """The small 2x workflow with an adapter loader wired in: every pack node but the trainer in one graph,
    with one output (Save Video) so a prompt with one bad value is refused whole, not run in part."""
    prompt = {k: n for k, n in small(object_info).items() if n["class_type"] != "PreviewImage"}
    sampler = node_id(prompt, PACK + "Sampler")
    prompt["980"] = {
        "class_type": PACK + "AdapterLoader",
        "inputs": {"model": prompt[sampler]["inputs"]["model"], "adapter_name": f"{ADAPTERS['a']}.safetensors"},
    }
    prompt[sampler]["inputs"]["adapter"] = ["980", 0]
    return prompt


def trainer_prompt(data: Path, **values) -> dict:
    inputs = {
        "model": ["1", 0], "vae": ["2", 0], "data_folder": str(data), "adapter_name": "bad_input_run",
        "steps": 2, "learning_rate": 1e-4, "lora_rank": 2, "crop_width": 64, "crop_height": 48, "max_frames": 5,
        "checkpoint_every": 1000, "seed": 0,
    }  # fmt: skip
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": f"{DIT.name}.safetensors", "weight_dtype": "default"},
        },
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": f"{VAE.name}.safetensors"}},
        "3": {"class_type": PACK + "Trainer", "inputs": inputs | values},
    }


def long_video_prompt(object_info) -> dict:
    """The shipped long-video workflow (Load Video -> PatchVSR Long Video -> Save Video) on the 5-frame clip
    at 2x: the long-video node's widgets are checked in a graph of their own."""
    prompt = tiny_prompt(REPO / "workflows" / "patchvsr_long_video_4k.json", object_info)
    prompt = override(prompt, "LoadVideo", file="clip_5f.mp4")
    return override(prompt, PACK + "LongVideo", target="scale", scale=2.0, patch_width=128, patch_height=80)


def prompt_for(object_info, matrix, class_type: str) -> tuple[dict, str]:
    if class_type == PACK + "Trainer":
        return trainer_prompt(matrix["data"]), "3"
    if class_type == PACK + "LongVideo":
        prompt = long_video_prompt(object_info)
        return prompt, node_id(prompt, class_type)
    prompt = full_prompt(object_info)
    return prompt, node_id(prompt, class_type)


def test_every_pack_node_is_in_the_matrix(object_info):
    nodes = {n for n in object_info if n.startswith(PACK)}
    assert nodes == {PACK + k for k in ("Partitioner", "UpscaleEncode", "GlobalContext", "Stitcher", "Sampler",
                                         "Decode", "AdapterLoader", "Trainer", "LongVideo")}, nodes  # fmt: skip


def test_queue_time_refuses_every_out_of_range_wrong_type_and_unlisted_value(server, object_info, matrix):
    """Generated: every widget of every pack node, each bad value alone in an otherwise good prompt."""
    tried = 0
    for class_type in sorted(n for n in object_info if n.startswith(PACK)):
        for name, kind, opts in widgets(object_info[class_type]):
            for what, value in bad_values(kind, opts):
                prompt, node = prompt_for(object_info, matrix, class_type)
                prompt[node]["inputs"][name] = value
                rejection_names(server, prompt, node, name)
                count(matrix, server, f"{class_type}.{name} {what} {value!r}")
                tried += 1
    assert tried >= 60, tried
    good_run(matrix, server, object_info)


def test_queue_time_accepts_every_boundary_value(server, object_info, matrix):
    """min and max of every number are accepted at queue time. The prompts wait behind a long sampler run
    and are deleted from the queue before they run (the runs at the boundaries are the next test's)."""
    blocker = override(small(object_info), "PatchVSR_Sampler", steps=1000, seed=1)
    blocker_id, body = server.submit(blocker)
    assert blocker_id, body
    try:
        for class_type in sorted(n for n in object_info if n.startswith(PACK)):
            for name, kind, opts in widgets(object_info[class_type]):
                for what, value in boundary_values(kind, opts):
                    prompt, node = prompt_for(object_info, matrix, class_type)
                    prompt[node]["inputs"][name] = value
                    prompt_id, body = server.submit(prompt)
                    assert prompt_id, f"{class_type}.{name} at {what} {value}: refused {json.dumps(body)[:1000]}"
                    server.delete_queued([prompt_id])
                    count(matrix, server, f"{class_type}.{name} at {what}")
    finally:
        server.delete_queued([])
        server.interrupt()
        server.wait_for_history(blocker_id, timeout=300)
    good_run(matrix, server, object_info)


# The cheap nodes run at their boundaries on tiny shapes. Not run: the sampler's steps = max (the cancel case
# below), and scale = max (8x of the test clip is 200 patches: minutes on CI's CPUs, nothing a bad input adds).
RUN_AT_BOUNDARY = ("Partitioner", "UpscaleEncode", "GlobalContext", "Stitcher", "Sampler", "Decode")
SKIP_RUN = {("Sampler", "steps", "max"), ("Partitioner", "scale", "max")}


def test_boundary_values_run_or_name_the_input(server, object_info, matrix):
    for short in RUN_AT_BOUNDARY:
        class_type = PACK + short
        for name, kind, opts in widgets(object_info[class_type]):
            for what, value in boundary_values(kind, opts):
                if (short, name, what) in SKIP_RUN:
                    continue
                prompt = cheap(object_info)
                prompt[node_id(prompt, class_type)]["inputs"][name] = value
                result = server.run(prompt, timeout=600)
                if result.status != "success":
                    msg = error_text(result)
                    # e.g. "overlap_px: 64 is more than half of tile_px 64": names both
                    assert name in msg, f"{class_type}.{name}={value}: {msg}"
                count(matrix, server, f"run {class_type}.{name}={value}")
    good_run(matrix, server, object_info)


def sampler_with(object_info, **values) -> dict:
    return override(small(object_info), "PatchVSR_Sampler", **values)


FILE_CASES = [
    # (node, input, file, words the message must hold)
    ("Sampler", "lora_name", "bad_empty.safetensors", ["lora_name: 'bad_empty.safetensors' cannot be read"]),
    ("Sampler", "lora_name", "bad_truncated.safetensors", ["lora_name: 'bad_truncated.safetensors' cannot be read"]),
    ("Sampler", "lora_name", "bad_text.safetensors", ["lora_name: 'bad_text.safetensors' cannot be read"]),
    ("Sampler", "lora_name", "bad_sd15_lora.safetensors", ["lora_name:", "patches 0 weights", "holds 1 modules"]),
    ("Sampler", "lora_name", "bad_not_a_lora.safetensors", ["lora_name:", "patches 0 weights"]),
    ("AdapterLoader", "adapter_name", "bad_empty.safetensors", ["adapter 'bad_empty.safetensors'", "not a readable"]),
    ("AdapterLoader", "adapter_name", "bad_truncated.safetensors", ["adapter 'bad_truncated.safetensors'"]),
    ("AdapterLoader", "adapter_name", "bad_text.safetensors", ["adapter 'bad_text.safetensors'", "not a readable"]),
    ("AdapterLoader", "adapter_name", "bad_plain_lora.safetensors", ["not a PatchVSR adapter"]),
    ("AdapterLoader", "adapter_name", f"{ADAPTERS['other']}.safetensors", ["trained for another base model"]),
]


@pytest.mark.parametrize("short,name,file,words", FILE_CASES, ids=[f"{c[1]}-{c[2]}" for c in FILE_CASES])
def test_bad_files_are_refused_by_name(server, object_info, matrix, short, name, file, words):
    prompt = full_prompt(object_info)
    prompt[node_id(prompt, PACK + short)]["inputs"][name] = file
    if short == "Sampler":  # the adapter loader would fail first on nothing; keep the sampler's own inputs
        prompt[node_id(prompt, PACK + "Sampler")]["inputs"].pop("adapter")
    msg = error_text(server.run(prompt))
    assert all(w in msg for w in words), msg
    count(matrix, server, f"{name}={file}")


def test_missing_files_are_refused_at_queue_time(server, object_info, matrix):
    for short, name in (("Sampler", "lora_name"), ("AdapterLoader", "adapter_name")):
        prompt = full_prompt(object_info)
        node = node_id(prompt, PACK + short)
        prompt[node]["inputs"][name] = "deleted_yesterday.safetensors"
        assert "deleted_yesterday.safetensors" in rejection_names(server, prompt, node, name)
        count(matrix, server, f"{name} missing")
    for folder, words in (("no/such/folder", "data_folder:"), ("", "data_folder:")):
        msg = error_text(server.run(trainer_prompt(Path(folder) if folder else "")))
        assert words in msg, msg
        count(matrix, server, f"data_folder={folder!r}")
    good_run(matrix, server, object_info)


def test_trainer_data_folder_without_clips_or_with_damaged_clip(server, matrix):
    empty = server.base_dir / "train_empty"
    empty.mkdir(exist_ok=True)
    damaged = server.base_dir / "train_damaged"
    damaged.mkdir(exist_ok=True)
    (damaged / "clip.mp4").write_bytes((matrix["data"] / "clip.mp4").read_bytes()[:200])
    for folder, words in ((empty, "data_folder: no videos"), (damaged, "none of the 1 clips in")):
        result = server.run(trainer_prompt(folder, adapter_name=f"bad_{folder.name}"))
        msg = error_text(result)
        assert words in msg and folder.name in msg, msg
        assert not list((server.base_dir / "models" / "patchvsr").glob(f"bad_{folder.name}.safetensors"))
        count(matrix, server, f"trainer data {folder.name}")


def test_mismatched_plans_latents_contexts_and_adapters(server, object_info, matrix):
    base = cheap(object_info)
    part, sampler = node_id(base, PACK + "Partitioner"), node_id(base, PACK + "Sampler")
    ctx = node_id(base, PACK + "GlobalContext")
    # A second plan (another scale) given to one node only.
    other = copy.deepcopy(base[part])
    other["inputs"]["scale"] = 2.0
    cases = []
    for victim, name, words in (
        (sampler, "plan", "latent: shape"),
        (ctx, "plan", "context: this global context was built for another plan"),
        (node_id(base, PACK + "UpscaleEncode"), "plan", "latent: shape"),
    ):
        prompt = copy.deepcopy(base)
        prompt["990"] = copy.deepcopy(other)
        prompt[victim]["inputs"][name] = ["990", 0]
        cases.append((f"{base[victim]['class_type']}.{name} from another plan", prompt, words))
    # An adapter without the global context.
    prompt = full_prompt(object_info)
    prompt[node_id(prompt, PACK + "Sampler")]["inputs"].pop("context")
    cases.append(("adapter without context", prompt, "context: a trained adapter needs the global context"))
    # A latent of another family (48 channels) to the decoder and the sampler.
    for victim, name, words in ((node_id(base, PACK + "Decode"), "samples", "samples: 48 channels"),
                                (sampler, "latent", "latent: shape")):  # fmt: skip
        prompt = copy.deepcopy(base)
        prompt["992"] = {
            "class_type": "PatchVSRTest_RandomLatent",
            "inputs": {"channels": 48, "frames": 2, "height": 20, "width": 32, "seed": 0},
        }
        prompt[victim]["inputs"][name] = ["992", 0]
        cases.append((f"48-channel latent to {name}", prompt, words))
    # A model of another family for the partitioner.
    prompt = copy.deepcopy(base)
    prompt["993"] = {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT_22.name}.safetensors", "weight_dtype": "default"}}  # fmt: skip
    prompt[sampler]["inputs"]["model"] = ["993", 0]
    cases.append(("Wan 2.2 model to the sampler of a Wan 2.1 plan", prompt, "model: a wan2.2-ti2v-5b model"))
    # Frames of another clip than the plan's.
    prompt = copy.deepcopy(base)
    loader = node_id(prompt, "LoadVideo")
    prompt["994"] = copy.deepcopy(prompt[loader])
    prompt["994"]["inputs"]["file"] = "patchvsr_example.mp4"
    prompt["995"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["994", 0]}}
    prompt[node_id(prompt, PACK + "UpscaleEncode")]["inputs"]["images"] = ["995", 0]
    cases.append(("frames of another clip to Upscale & Encode", prompt, "images: 256x144 with 1 frames"))
    for case, prompt, words in cases:
        result = server.run(prompt)
        msg = error_text(result)
        if words is not None:
            assert words in msg, f"{case}: {msg}"
        count(matrix, server, case)
    good_run(matrix, server, object_info)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_grey_and_rgba_frames_work(server, object_info, matrix, channels):
    prompt = cheap(object_info)
    frames = node_id(prompt, "GetVideoComponents")
    prompt["996"] = {"class_type": "PatchVSRTest_Channels", "inputs": {"images": [frames, 0], "channels": channels}}
    for short in ("Partitioner", "UpscaleEncode", "GlobalContext"):
        prompt[node_id(prompt, PACK + short)]["inputs"]["images"] = ["996", 0]
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:2000]
    count(matrix, server, f"{channels}-channel frames")


@pytest.mark.parametrize("window_frames", [1, 5, 81, 121])
def test_every_valid_window_length_runs(server, object_info, matrix, window_frames):
    """1 and 5 frames used to end in `AssertionError: cannot overlap by 2` on a longer clip."""
    prompt = override(cheap(object_info), "PatchVSR_Partitioner", window_frames=window_frames)
    result = server.run(prompt)
    assert result.status == "success", json.dumps(result.error)[:2000]
    count(matrix, server, f"window_frames={window_frames}")


def test_invalid_window_length_names_the_neighbours(server, object_info, matrix):
    assert object_info[PACK + "Partitioner"]["input"]["required"]["window_frames"][1]["step"] == 1
    prompt = override(small(object_info), "PatchVSR_Partitioner", window_frames=80)
    text = rejection_names(server, prompt, node_id(prompt, PACK + "Partitioner"), "window_frames")
    assert "window_frames: 80 frames is not 1 + 4k" in text and "77 or 81" in text, text
    count(matrix, server, "window_frames=80")


def test_scale_one_keeps_the_input_size_and_patch_advice_is_possible(server, object_info, matrix):
    result = server.run(override(small(object_info), "PatchVSR_Partitioner", scale=1.0, patch_height=80))
    assert result.status == "success", json.dumps(result.error)[:2000]
    count(matrix, server, "scale=1.0")
    # A 128x80 target cannot hold a 96 px patch: the advice is a multiple of 16 that fits, never 8.
    msg = error_text(server.run(override(small(object_info), "PatchVSR_Partitioner", scale=1.0, patch_height=96)))
    assert "patch_height: 96 px is larger than the target's 80 px. Lower patch_height to at most 80" in msg, msg
    count(matrix, server, "patch_height=96 at scale 1")


def test_far_out_of_scale_adapter_stops_at_the_first_step(server, object_info, matrix, tiny_models):
    """Finite weights, but so large the DiT's output overflows: stopped at step 1, not after all steps."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = tiny_models / "patchvsr" / f"{ADAPTERS['a']}.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    scaled = {k: (v * 1e30 if v.is_floating_point() and "lora" not in k else v) for k, v in tensors.items()}
    save_file(scaled, str(server.base_dir / "models" / "patchvsr" / "bad_scaled.safetensors"), metadata=meta)
    matrix["files"].check("wrote bad_scaled")
    prompt = full_prompt(object_info)
    prompt = override(prompt, PACK + "AdapterLoader", adapter_name="bad_scaled.safetensors")
    prompt = override(prompt, PACK + "Sampler", steps=50, t0=1.0)
    sampler = node_id(prompt, PACK + "Sampler")
    result = server.run(prompt)
    msg = error_text(result)
    assert "adapter: 'bad_scaled.safetensors'" in msg and "sampling stopped at step 1 of 50" in msg, msg
    ticks = [
        m["data"]["value"] for m in result.messages if m["type"] == "progress" and m["data"].get("node") == sampler
    ]
    totals = [m["data"]["max"] for m in result.messages if m["type"] == "progress" and m["data"].get("node") == sampler]
    assert not ticks or max(ticks) <= max(totals) / 50 + 1, (ticks, totals)
    count(matrix, server, "far out of scale adapter")
    good_run(matrix, server, object_info)


CANCEL = [
    ("Sampler", {"PatchVSR_Sampler": {"steps": 1000}}),  # also the sampler's steps at max
    ("UpscaleEncode", {"PatchVSR_Partitioner": {"target": "4K"}, "PatchVSR_UpscaleEncode": {"tile_px": 64}}),
    ("Trainer", None),
]


@pytest.mark.parametrize("short,overrides", CANCEL, ids=[c[0] for c in CANCEL])
def test_cancel_during_each_long_node(server, object_info, matrix, short, overrides):
    if short == "Trainer":
        prompt, node = trainer_prompt(matrix["data"], steps=100_000, adapter_name="bad_cancelled"), "3"
    else:
        prompt = small(object_info)
        for class_type, values in overrides.items():
            prompt = override(prompt, class_type, **values)
        node = node_id(prompt, PACK + short)

    def on_message(msg):
        if msg["type"] == "progress" and msg["data"].get("node") == node:
            server.interrupt()

    result = server.run(prompt, timeout=600, on_message=on_message)
    assert result.status == "interrupted", (result.status, json.dumps(result.error)[:1500])
    if short == "Trainer":
        assert not (server.base_dir / "models" / "patchvsr" / "bad_cancelled.safetensors").exists()
    count(matrix, server, f"cancel {short}")
    good_run(matrix, server, object_info)
