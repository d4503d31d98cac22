"""The UI-to-API converter on the features the frontend's files use (the shipped files are run for real
by the integration tests)."""

import pytest
from harness.workflow import override, prune, to_api

pytestmark = pytest.mark.pure  # the pack's pure-PyTorch core: one host runs it (.ci/test)

# ComfyUI 0.33's Save Video format option: a dynamic combo inside a dynamic combo's option.
H264 = {"key": "h264", "inputs": {"optional": {"crf": ["FLOAT", {}]}}}
MP4 = {"key": "mp4", "inputs": {"required": {"codec": ["COMFY_DYNAMICCOMBO_V3", {"options": [H264]}]}}}
INFO = {
    "Loader": {"input": {"required": {"name": [["a.safetensors", "b.safetensors"], {}]}}, "output": ["MODEL"]},
    "Sampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0, "control_after_generate": True}],
                "steps": ["INT", {"default": 20}],
                "mode": ["COMBO", {"options": ["x", "y"]}],
            },
            "optional": {"strength": ["FLOAT", {"default": 1.0}]},
        },
        "output": ["LATENT"],
    },
    "LoadVideo": {
        "input": {"required": {"file": ["COMBO", {"options": [], "video_upload": True}]}},
        "output": ["VIDEO"],
    },
    "Filter": {"input": {"required": {"model": ["MODEL", {}]}}, "output": ["MODEL"]},
    # Shaped like ComfyUI 0.33's Save Video, with a hidden back-compat input that has no widget.
    "SaveDyn": {
        "input": {
            "required": {
                "prefix": ["STRING", {}],
                "format": ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "auto", "inputs": {}}, MP4]}],
            },
            "optional": {"codec": ["COMFY_DYNAMICCOMBO_V3", {"options": [], "hidden": True}], "fps": ["INT", {}]},
        },
        "output": [],
        "output_node": True,
    },
    "Save": {
        "input": {"required": {"samples": ["LATENT", {}], "video": ["VIDEO", {}]}},
        "output": [],
        "output_node": True,
    },
}


def node(nid, kind, widgets=(), inputs=(), mode=0):
    return {"id": nid, "type": kind, "mode": mode, "widgets_values": list(widgets), "inputs": list(inputs)}


def workflow():
    return {
        "nodes": [
            node(1, "Loader", ["b.safetensors"]),
            node(2, "Filter", inputs=[{"name": "model", "type": "MODEL", "link": 1}], mode=4),  # bypassed
            node(3, "Reroute", inputs=[{"name": "", "type": "*", "link": 2}]),
            node(4, "PrimitiveNode", ["77", "fixed"]),
            node(
                5,
                "Sampler",
                [123, "randomize", 99, "y", 0.5],
                inputs=[
                    {"name": "model", "type": "MODEL", "link": 3},
                    {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 4},  # converted widget
                ],
            ),
            node(6, "LoadVideo", ["clip.mp4", "image"]),
            node(7, "Save", inputs=[{"name": "samples", "link": 5}, {"name": "video", "link": 6}]),
            node(8, "Note", ["hello"]),
            node(9, "Loader", ["a.safetensors"], mode=2),  # muted
        ],
        "links": [
            [1, 1, 0, 2, 0, "MODEL"],
            [2, 2, 0, 3, 0, "MODEL"],
            [3, 3, 0, 5, 0, "MODEL"],
            [4, 4, 0, 5, 1, "INT"],
            [5, 5, 0, 7, 0, "LATENT"],
            [6, 6, 0, 7, 1, "VIDEO"],
        ],
    }


def test_ui_to_api():
    api = to_api(workflow(), INFO)
    assert set(api) == {"1", "5", "6", "7"}, "bypassed, reroute, primitive, note and muted nodes are not run"
    sampler = api["5"]["inputs"]
    assert sampler["model"] == ["1", 0], "links follow reroutes and pass through bypassed nodes"
    assert sampler["seed"] == 123 and sampler["mode"] == "y" and sampler["strength"] == 0.5, "control value skipped"
    assert sampler["steps"] == "77", "a converted widget takes its primitive's value"
    assert api["6"]["inputs"] == {"file": "clip.mp4"}, "the upload button's value is skipped"
    assert api["7"]["inputs"] == {"samples": ["5", 0], "video": ["6", 0]}


def test_override_and_prune():
    api = to_api(workflow(), INFO)
    api = override(api, "Sampler", steps=2)
    assert api["5"]["inputs"]["steps"] == 2
    with pytest.raises(KeyError):
        override(api, "Sampler", model="x")  # a linked input is not a widget
    api["10"] = {"class_type": "Loader", "inputs": {"name": "a.safetensors"}}
    assert "10" not in prune(api, INFO)


@pytest.mark.parametrize(
    "widgets,expected",
    [
        (["v/x", "mp4", "h264", 20.0, 16], {"prefix": "v/x", "format": "mp4", "format.codec": "h264",
                                           "format.codec.crf": 20.0, "fps": 16}),
        (["v/x", "auto", 16], {"prefix": "v/x", "format": "auto", "fps": 16}),
    ],
    ids=["nested", "no-option-widgets"],
)  # fmt: skip
def test_dynamic_combo_widgets_follow_their_value(widgets, expected):
    api = to_api({"nodes": [node(1, "SaveDyn", widgets)], "links": []}, INFO)
    assert api["1"]["inputs"] == expected


def test_unknown_node_type_is_an_error():
    wf = workflow()
    wf["nodes"].append(node(11, "NotInstalled"))
    with pytest.raises(ValueError, match="NotInstalled"):
        to_api(wf, INFO)
