"""The pack in a real ComfyUI server, driven over its HTTP API like an artist's frontend would. The shipped
workflows themselves run in the real web page: test_browser.py."""

import json

import pytest
import requests
from harness.paths import REPO
from harness.server import PACK_DIR_NAME
from harness.tiny_models import DIT, VAE
from harness.video import video_size

pytestmark = pytest.mark.integration
PACK_NODES = [
    "PatchVSR_Partitioner",
    "PatchVSR_UpscaleEncode",
    "PatchVSR_GlobalContext",
    "PatchVSR_Stitcher",
    "PatchVSR_Sampler",
    "PatchVSR_Decode",
    "PatchVSR_AdapterLoader",
    "PatchVSR_Trainer",
    "PatchVSR_LongVideo",
]  # fmt: skip
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def test_pack_loads_every_node(object_info):
    missing = [n for n in PACK_NODES if n not in object_info]
    assert not missing, f"the pack did not load these nodes: {missing}"
    for node in PACK_NODES:
        spec = object_info[node]["input"]
        for name, (_, *opts) in {**spec.get("required", {}), **spec.get("optional", {})}.items():
            assert opts and opts[0].get("tooltip"), f"{node}.{name} has no tooltip"
            # Frontends from 1.5x add a randomize-after-run control to an INT named seed whose spec leaves
            # control_after_generate out: a widget more than a saved workflow holds, so every later value
            # shifts by one (seen on 1.58.1), and a seed that must stay fixed to resume would change.
            if name in ("seed", "noise_seed"):
                assert "control_after_generate" in opts[0], f"{node}.{name}: say control_after_generate outright"


def test_workflows_are_served_as_templates(server):
    templates = server.get("/workflow_templates")
    assert {p.stem for p in WORKFLOWS} <= set(templates.get(PACK_DIR_NAME, [])), templates
    for path in WORKFLOWS:
        # The templates browser shows <name>.jpg beside each template, and each has a note for the artist.
        r = requests.get(f"{server.url}/api/workflow_templates/{PACK_DIR_NAME}/{path.stem}.jpg", timeout=30)
        assert r.ok and r.content[:3] == b"\xff\xd8\xff", f"{path.stem}.jpg: HTTP {r.status_code}"
        notes = [n for n in json.loads(path.read_text())["nodes"] if n["type"] in ("Note", "MarkdownNote")]
        assert notes and all(k in notes[0]["widgets_values"][0] for k in ("**Models**", "**Expect**")), path.name


def test_stock_loaders_detect_tiny_models(object_info):
    assert f"{DIT.name}.safetensors" in object_info["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert f"{VAE.name}.safetensors" in object_info["VAELoader"]["input"]["required"]["vae_name"][0]


def t2v_prompt(width=64, height=64, length=5):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{DIT.name}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": f"{VAE.name}.safetensors"}},
        "3": {"class_type": "PatchVSRTest_ZeroTextConditioning", "inputs": {"tokens": 8}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": width, "height": height, "length": length, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                                                    "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["2", 0]}},
        "7": {"class_type": "CreateVideo", "inputs": {"images": ["6", 0], "fps": 16.0}},
        "8": {"class_type": "SaveVideo", "inputs": {"video": ["7", 0], "filename_prefix": "tests/t2v", "format": "mp4", "codec": "h264"}},
    }  # fmt: skip


def test_plain_wan_t2v_graph_runs_on_tiny_models(server):
    result = server.run(t2v_prompt())
    assert result.status == "success", result.error
    (video,) = result.files(server.output_dir)
    assert video_size(video) == (64, 64, 5)


def test_bad_input_is_rejected_and_server_keeps_serving(server):
    bad = t2v_prompt()
    bad["5"]["inputs"]["steps"] = 0  # below the widget's minimum
    result = server.run(bad)
    assert result.status == "rejected"
    assert "5" in result.error["node_errors"], result.error
    assert "steps" in json.dumps(result.error["node_errors"]["5"])
    assert server.run(t2v_prompt(length=1)).status == "success"
