"""Benchmark: the pack at the dimensions of a real Wan (Wan 2.1 T2V 1.3B) through a real ComfyUI server.
Not part of CI: a CPU run takes tens of minutes and about 16 GB of memory.

    bash .ci/bench --real-dims                 # 5 frames (2 latent frames), pinned host
    bash .ci/bench --real-dims --frames 81     # what a GPU machine runs (hours on a CPU)
    bash .ci/bench --real-dims --host 0.33     # or PATCHVSR_HOST=0.33

1. Builds ComfyUI's own WanModel at Wan 2.1 T2V 1.3B's dimensions with fixed-seed random bf16 weights and
   saves it in the official key layout (Comfy-Org's repackaged wan2.1_t2v_1.3B_bf16.safetensors), and an
   untrained adapter for it made as the trainer's export makes one; both cached under .work/real-dims/cache,
   keyed by their recipes (the hosts share them).
2. Starts a ComfyUI server (`main.py --cpu`) and runs, each as its own prompt: loading the model (the
   stock UNETLoader; a test node reports what the host detected it as, which must be Wan 2.1 T2V at the
   real dims); one PatchVSR sampler step, cfg 1, on one native 832x480 patch (the partitioner at scale 1 on
   an 832x480 latent), training-free with the global context; the same with the untrained adapter through
   the Adapter Loader. Then, with the server stopped, a 1-step run of the command line trainer
   (tools/train_adapter.py) on one synthetic 832x480 clip.
3. Reports per run the wall time, the process's peak resident memory (the server's, reset between prompts
   through /proc/<pid>/clear_refs; the trainer's from wait4) and the pack's own estimates: the input shape
   the sampler asks ComfyUI's memory estimate about (nodes/patchwise.py reserved_shape, models/memory.py)
   with ComfyUI's figure for it, the partitioner's memory line (models/cost.py) and the trainer's memory
   formula (README, "Train one"). Prints a Markdown table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness.paths import HOST, WORK, comfy_root, host_python  # noqa: E402

# Wan 2.1 T2V 1.3B, as its config.json gives it and ComfyUI detects it from the checkpoint's shapes.
WAN21_13B = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16, out_dim=16, text_dim=4096,
                 freq_dim=256, patch_size=[1, 2, 2])  # fmt: skip
# Everything the generated weights depend on: a change here is a new file, never a stale cache hit.
MODEL_RECIPE = {"base": "wan2.1_t2v_1.3B", **WAN21_13B, "dtype": "bf16", "seed": 0, "std": 0.02, "version": 1}
# The untrained adapter: the default AdapterConfig for the base, initialised under the trainer's seed.
ADAPTER_RECIPE = {"model": MODEL_RECIPE, "config": "AdapterConfig.for_base defaults", "seed": 0, "version": 1}
CACHE = REPO / ".work" / "real-dims" / "cache"  # host-independent files, shared by both hosts
PLACE = WORK / "real-dims"  # per host: the server's base folder, its models folder (links), the trainer's run
PATCH_PX = (480, 832)  # Wan 2.1's native size: the plan's single base patch is the whole frame
STRIDE = 8  # Wan 2.1 VAE: pixels per latent cell
TEXT_TOKENS = 512  # Wan's umT5 prompt length: ComfyUI's Wan tokenizer pads every prompt to it
TIMEOUT_S = 6 * 3600
# The trainer's memory formula (README "Train one"): 2 B per frozen base weight (bf16), 16 B per trained
# weight (fp32 weight, gradient, two AdamW moments), and activations of 20.1 kB per token at width 128,
# linear in the width (tests/benchmarks/train_memory.py).
BASE_BYTES, TRAINED_BYTES, ACT_BYTES_PER_TOKEN_W128 = 2, 16, 20.1e3


def digest(recipe: dict) -> str:
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def model_path() -> Path:
    return CACHE / f"wan2.1_t2v_1.3B_bf16-random-{digest(MODEL_RECIPE)}.safetensors"


def adapter_path() -> Path:
    return CACHE / f"patchvsr-untrained-wan2.1-1.3B-{digest(ADAPTER_RECIPE)}.safetensors"


def latent_frames(frames: int) -> int:
    return (frames - 1) // 4 + 1


# -- 1. the files (run in a subprocess: the parent stays small while the server runs) ---------------------
def _random_state_dict(dm) -> dict:
    """The official 1.3B checkpoint's keys and shapes (WanModel's own names) with fixed-seed random bf16
    values: weights N(0, std) (activations stay finite through 30 blocks), biases 0, norm scales 1, and
    the modulation tables randn / sqrt(dim) as Wan initialises them."""
    import torch

    gen = torch.Generator().manual_seed(MODEL_RECIPE["seed"])
    out = {}
    for name, p in sorted(dm.state_dict().items()):  # sorted: the draw order is part of the recipe
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            t = torch.zeros(p.shape)
        elif leaf == "modulation":
            t = torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5
        elif p.ndim == 1:
            t = torch.ones(p.shape)
        else:
            t = torch.randn(p.shape, generator=gen) * MODEL_RECIPE["std"]
        out[name] = t.to(torch.bfloat16)
    return out


def build() -> dict:
    """Writes the model and the adapter unless cached; returns their paths and the parameter counts."""
    from harness.inprocess import import_comfy

    comfy = import_comfy()
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from models.adapter import AdapterConfig, PatchVSRAdapter
    from models.adapter_file import META_KEY, save_adapter

    dims = {k: tuple(v) if k == "patch_size" else v for k, v in WAN21_13B.items()}
    with torch.device("meta"):
        dm = comfy.ldm.wan.model.WanModel(model_type="t2v", operations=comfy.ops.disable_weight_init, **dims)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = model_path()
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        save_file(_random_state_dict(dm), str(tmp), metadata={"patchvsr_recipe": json.dumps(MODEL_RECIPE)})
        tmp.replace(path)  # an interrupted build never leaves a truncated file under the cached name
    apath = adapter_path()
    if not apath.exists():
        dm.load_state_dict(load_file(str(path)), assign=True)
        # As Trainer.__init__ builds it (its seed draws the LoRA down matrices) and Trainer.export writes it.
        torch.manual_seed(ADAPTER_RECIPE["seed"])
        cfg = AdapterConfig.for_base(dm.dim, dm.num_layers, dm.num_heads, dm.in_dim)
        adapter = PatchVSRAdapter(cfg, dm.blocks, dm.patch_embedding).float()
        meta = {"train_steps": "0", "train_scale": json.dumps([1.0, 4.5]), "train_batch": "1",
                "train_precision": "float32"}  # fmt: skip
        save_adapter(adapter, apath, meta)
        del adapter
    # The header is enough to count: no need to read 2.3 GB back.
    with safe_open(str(apath), "pt") as f:
        cfg = AdapterConfig.from_json(f.metadata()[META_KEY])
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    return {
        "model": str(path),
        "adapter": str(apath),
        "adapter_config": json.loads(cfg.to_json()),
        "base_params": sum(p.numel() for p in dm.parameters()),
        # Every tensor of the adapter file is a trained weight, except the LoRA alphas.
        "trained_params": sum(math.prod(s) for k, s in shapes.items() if not k.endswith(".alpha")),
        "keys": len(dm.state_dict()),
    }


def load_adapter_bf16(files: dict) -> dict:
    """The pack's adapter loader in-process as on a GPU host, whose compute dtype is bf16 (the CPU server runs
    fp32): the base's blocks in bf16, as ComfyUI holds them there; peak memory of load_adapter alone."""
    from harness.inprocess import import_comfy

    comfy = import_comfy()
    import torch
    from safetensors.torch import load_file

    from models.adapter_file import load_adapter

    dims = {k: tuple(v) if k == "patch_size" else v for k, v in WAN21_13B.items()}
    with torch.device("meta"):
        dm = comfy.ldm.wan.model.WanModel(model_type="t2v", operations=comfy.ops.disable_weight_init, **dims)
    dm.load_state_dict(load_file(files["model"]), assign=True)
    pid = os.getpid()
    reset_peak(pid)
    before = proc_status(pid)
    start = time.monotonic()
    with AnonPeak(pid) as anon, torch.inference_mode():  # ComfyUI runs nodes under inference_mode
        adapter = load_adapter(Path(files["adapter"]), dm.blocks, dm.patch_embedding,
                               (dm.dim, dm.num_layers, dm.num_heads, dm.in_dim), torch.bfloat16)  # fmt: skip
        adapter.cast_for_inference(torch.bfloat16)  # as nodes/adapter.py does
    return {
        "run": "load adapter, bf16 (in-process)", "wall_s": time.monotonic() - start, "rss_before": before["VmRSS"],
        "anon_before": before["RssAnon"], "peak_rss": proc_status(pid)["VmHWM"], "peak_anon": anon.peak,
        "adapter": {"parameters": sum(p.numel() for p in adapter.parameters()), "bytes": sum(p.nbytes for p in adapter.parameters()),
                    "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in adapter.parameters()})},
    }  # fmt: skip


# -- 2. the prompts ----------------------------------------------------------------------------------------
def load_prompt(unet: str) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {"class_type": "PatchVSRTest_ModelDims", "inputs": {"model": ["1", 0]}},
    }


def adapter_prompt(unet: str, adapter: str) -> dict:
    """The Adapter Loader by itself (a test node consumes its output)."""
    return load_prompt(unet) | {
        "11": {"class_type": "PatchVSR_AdapterLoader", "inputs": {"model": ["1", 0], "adapter_name": adapter}},
        "13": {"class_type": "PatchVSRTest_AdapterInfo", "inputs": {"adapter": ["11", 0]}},
    }


def sampler_prompt(unet: str, vae: str, frames: int, adapter: str | None = None) -> dict:
    """One sampler step (cfg 1) on one native patch: an 832x480 latent at scale 1 is planned as a single
    base patch, the upscale is the identity (latent bicubic), the context the latent itself at patch size.
    With the adapter the context's anchoring stays on (anchor_with_adapter; the same cost to within a blur
    of the latent) so that the untrained adapter, an exact identity, must give the training-free latent."""
    h, w = PATCH_PX[0] // STRIDE, PATCH_PX[1] // STRIDE
    plan, latent = ["4", 0], ["3", 0]
    prompt = load_prompt(unet) | {
        "3": {"class_type": "PatchVSRTest_RandomLatent",
              "inputs": {"channels": 16, "frames": latent_frames(frames), "height": h, "width": w, "seed": 0}},
        "4": {"class_type": "PatchVSR_Partitioner",
              "inputs": {"model": ["1", 0], "latent": latent, "target": "scale", "scale": 1.0, "keep_aspect": True,
                         "patch_width": 0, "patch_height": 0, "window_frames": 0}},
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "6": {"class_type": "PatchVSR_UpscaleEncode",
              "inputs": {"plan": plan, "vae": ["5", 0], "latent": latent, "latent_mode": "latent bicubic",
                         "tile_px": 512}},
        "7": {"class_type": "PatchVSR_GlobalContext",
              "inputs": {"plan": plan, "vae": ["5", 0], "latent": latent, "strength": 0.5, "noise_t": 0.15,
                         "seed": 0}},
        "8": {"class_type": "PatchVSRTest_ZeroTextConditioning", "inputs": {"tokens": TEXT_TOKENS}},
        "9": {"class_type": "PatchVSR_Sampler",
              "inputs": {"model": ["1", 0], "positive": ["8", 0], "negative": ["8", 0], "latent": ["6", 0],
                         "plan": plan, "context": ["7", 0], "lora_name": "None", "lora_strength": 1.0, "seed": 0,
                         "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "t0": 0.3,
                         "patch_batch": 0}},
        "10": {"class_type": "PatchVSRTest_LatentStats", "inputs": {"samples": ["9", 0]}},
        "12": {"class_type": "SaveLatent",
               "inputs": {"samples": ["9", 0], "filename_prefix": f"real-dims/{'adapter' if adapter else 'free'}"}},
    }  # fmt: skip
    if adapter is not None:
        prompt |= adapter_prompt(unet, adapter)
        prompt["9"]["inputs"]["adapter"] = ["11", 0]
        prompt["7"]["inputs"]["anchor_with_adapter"] = True
    return prompt


# -- 3. measuring ------------------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (its peak) and RssAnon of a process, in bytes. RSS counts the pages of files a process
    maps (safetensors files are read through mmap: pages the kernel can drop), RssAnon only its own memory."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            out[key] = int(value.split()[0]) * 1024
    return out


class AnonPeak:
    """The largest RssAnon of a process while the block runs, sampled every POLL_S seconds (the kernel keeps
    no peak of it): a lower bound that misses only spikes shorter than the interval."""

    POLL_S = 0.2

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, proc_status(self.pid)["RssAnon"])
            except (OSError, KeyError):  # the process has exited (or is a zombie without memory figures)
                return
            self.stop.wait(self.POLL_S)

    def __enter__(self) -> AnonPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def reset_peak(pid: int) -> None:
    """Sets the process's VmHWM back to its current RSS (proc(5): clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


RESERVED = re.compile(r"PatchVSR: memory estimate asked for input \[([\d, ]+)\] \(([\d.]+) MiB")


def run_prompt(server, name: str, prompt: dict) -> dict:
    pid = server.proc.pid
    log_start = server.log_path.stat().st_size
    reset_peak(pid)
    before = proc_status(pid)
    start = time.monotonic()
    with AnonPeak(pid) as anon:
        result = server.run(prompt, timeout=TIMEOUT_S)
    wall = time.monotonic() - start
    if result.status != "success":
        raise RuntimeError(f"{name}: {result.status}: {json.dumps(result.error)[:3000]}\n{server.log_tail()}")
    with open(server.log_path, errors="replace") as f:
        f.seek(log_start)
        new_log = f.read()
    row = {"run": name, "wall_s": wall, "rss_before": before["VmRSS"], "anon_before": before["RssAnon"],
           "peak_rss": proc_status(pid)["VmHWM"], "peak_anon": anon.peak}  # fmt: skip
    found = RESERVED.findall(new_log)
    if found:
        shape, mib = found[-1]
        # ComfyUI asks its loader for the estimate at twice the batch (room for cond and uncond rows in one
        # call) and for the estimate at the batch itself as the minimum (comfy/sampler_helpers.py
        # estimate_memory); the formula is linear in the batch.
        row |= {"reserved_shape": [int(v) for v in shape.split(",")], "estimate_bytes": float(mib) * 2**20,
                "reserved_bytes": 2 * float(mib) * 2**20}  # fmt: skip
    outputs = result.outputs
    if "2" in outputs:
        row["dims"] = outputs["2"]["patchvsr_dims"][0]
    if "4" in outputs:
        row["cost_text"] = outputs["4"]["text"][0]
    if "13" in outputs:
        row["adapter"] = outputs["13"]["patchvsr_adapter"][0]
    if "10" in outputs:
        row["stats"] = outputs["10"]["patchvsr_stats"][0]
        (saved,) = result.files(server.output_dir, suffix=".latent")
        row["latent_file"] = str(saved)
    return row


def check_dims(dims: dict) -> None:
    want = {k: WAN21_13B[k] for k in WAN21_13B} | {"model_type": "t2v", "config": "WAN21_T2V"}
    got = {k: dims.get(k) for k in want}
    assert got == want, f"the host detected the generated checkpoint as {got}, not Wan 2.1 T2V 1.3B {want}"


def run_trainer(files: dict, vae: Path, frames: int) -> dict:
    """The command line trainer, 1 step on one synthetic 832x480 clip; its peak RSS from wait4."""
    from harness.runs import make_clip

    place = PLACE / f"train-{frames}f"
    data = place / "data"
    clip = data / "clip.mp4"
    if not clip.exists():
        make_clip(clip, width=PATCH_PX[1], height=PATCH_PX[0], frames=frames)
    out = place / "adapter.safetensors"
    cmd = [
        host_python(), str(REPO / "tools" / "train_adapter.py"), "--comfyui", str(comfy_root()),
        "--model", files["model"], "--vae", str(vae), "--data", str(data), "--out", str(out),
        "--steps", "1", "--max-frames", str(frames), "--overwrite", "--restart",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    readers = [threading.Thread(target=lambda s=s: lines.extend(s)) for s in (proc.stdout, proc.stderr)]
    for r in readers:
        r.start()
    # wait4 reaps the child with its own resource usage: ru_maxrss is its peak resident set, in KiB.
    with AnonPeak(proc.pid) as anon:
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    text = "".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"the trainer exited with {proc.returncode}:\n{text[-4000:]}")
    step = re.search(r"step 1 of 1 done \(([\d.]+) s\)", text)
    # The run's checkpoint holds the adapter and its AdamW moments (about 7 GB at these dims): not kept.
    for ckpt in (place / "adapter.ckpt" / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    tokens = latent_frames(frames) * (PATCH_PX[0] // STRIDE // 2) * (PATCH_PX[1] // STRIDE // 2)
    act = ACT_BYTES_PER_TOKEN_W128 * WAN21_13B["dim"] / 128 * tokens
    estimate = BASE_BYTES * files["base_params"] + TRAINED_BYTES * files["trained_params"] + act
    return {
        "run": "trainer", "wall_s": wall, "step_s": float(step.group(1)) if step else None,
        "peak_rss": usage.ru_maxrss * 1024, "peak_anon": anon.peak, "estimate_bytes": estimate, "activation_bytes": act,
        "tokens_max": tokens,
    }  # fmt: skip


# -- 4. the whole job --------------------------------------------------------------------------------------
def link(target: Path, at: Path) -> Path:
    at.parent.mkdir(parents=True, exist_ok=True)
    if at.is_symlink() or at.exists():
        at.unlink()
    at.symlink_to(target)
    return at


def measure(frames: int, skip_trainer: bool) -> dict:
    from harness.server import ComfyServer
    from harness.tiny_models import VAE, ensure_in_subprocess
    from safetensors.torch import load_file

    # 1. Files: the model and the adapter (cached), the tiny Wan 2.1 VAE (the sampler path only checks its
    #    latent layout: the latent input skips every encode; the trainer encodes its clip with it).
    print(f"[real-dims] building or reusing the model and adapter under {CACHE}", file=sys.stderr, flush=True)
    built = subprocess.run([host_python(), __file__, "--one", "build"], check=True, capture_output=True, text=True)
    files = json.loads(built.stdout.strip().splitlines()[-1])
    vae = ensure_in_subprocess(WORK / "models") / "vae" / f"{VAE.name}.safetensors"
    models = PLACE / "models"
    unet = link(Path(files["model"]), models / "diffusion_models" / Path(files["model"]).name).name
    link(vae, models / "vae" / vae.name)
    adapter = link(Path(files["adapter"]), models / "patchvsr" / Path(files["adapter"]).name).name
    # 2. The adapter loader as a GPU host runs it (bf16), in its own process.
    print("[real-dims] adapter loader in bf16 ...", file=sys.stderr, flush=True)
    cmd = [host_python(), __file__, "--one", "loader", "--files", json.dumps(files)]
    loader = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = [json.loads(loader.stdout.strip().splitlines()[-1])]
    # 3. The server: load, training-free, adapter; each prompt reuses the nodes the one before ran.
    with ComfyServer(PLACE / "server", models) as server:
        idle = proc_status(server.proc.pid)["VmRSS"]
        for name, prompt in (
            ("load model", load_prompt(unet)),
            ("training-free", sampler_prompt(unet, vae.name, frames)),
            ("load adapter", adapter_prompt(unet, adapter)),
            ("untrained adapter", sampler_prompt(unet, vae.name, frames, adapter)),
        ):
            print(f"[real-dims] {name} ...", file=sys.stderr, flush=True)
            rows.append(run_prompt(server, name, prompt))
            print(f"[real-dims] {name}: {rows[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
        free, adapted = (load_file(r.pop("latent_file"))["latent_tensor"] for r in rows if "latent_file" in r)
    identity_error = float((free - adapted).abs().max())
    # 4. The trainer, with the server gone (both together would not fit this machine's memory).
    if not skip_trainer:
        print("[real-dims] trainer (command line, 1 step) ...", file=sys.stderr, flush=True)
        rows.append(run_trainer(files, vae, frames))
    return {
        "date": time.strftime("%Y-%m-%d"), "host": HOST, "frames": frames, "latent_frames": latent_frames(frames),
        "patch_px": list(PATCH_PX), "text_tokens": TEXT_TOKENS, "threads": os.cpu_count(), "server_idle_rss": idle,
        "partitioner_cost": next(r["cost_text"] for r in rows if "cost_text" in r), "identity_max_abs_error": identity_error, "files": files,
        "rows": rows,
    }  # fmt: skip


def dims_of(res: dict) -> dict:
    return next(r["dims"] for r in res["rows"] if "dims" in r)


def check(res: dict) -> None:
    """What the run must show, checked after its figures are written."""
    check_dims(dims_of(res))
    for r in res["rows"]:
        assert r.get("stats", {}).get("finite", True), f"{r['run']}: the sampler's output is not finite: {r['stats']}"
    assert res["identity_max_abs_error"] == 0.0, (
        f"the untrained adapter changed the latent by up to {res['identity_max_abs_error']}: it is not an identity"
    )


def gib(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**30:.1f} GiB"


def memory_line(cost_text: str) -> str:
    return next((ln for ln in cost_text.splitlines() if ln.startswith("Memory estimate")), "")


def table(res: dict) -> str:
    d = dims_of(res)
    out = [
        f"Wan 2.1 T2V 1.3B dims ({d['config']}: dim {d['dim']}, {d['num_layers']} blocks, {d['num_heads']} heads, "
        f"ffn {d['ffn_dim']}, {d['parameters'] / 1e9:.2f} B parameters, loaded as {d['dtype']}), random weights; "
        f"host {res['host']}, CPU ({res['threads']} cores); one {res['patch_px'][1]}x{res['patch_px'][0]} patch, "
        f"{res['frames']} frames ({res['latent_frames']} latent), {res['text_tokens']} text tokens, 1 step, cfg 1. "
        f"Server idle: {gib(res['server_idle_rss'])} RSS. The untrained adapter's latent differs from the "
        f"training-free one by at most {res['identity_max_abs_error']:g}.",
        "",
        "| run | wall | peak RSS (before) | peak anonymous RSS (before) | pack's estimate |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if r["run"] == "trainer":
            step = f", step {r['step_s']:.0f} s" if r.get("step_s") else ""
            est = (f"{gib(r['estimate_bytes'])} (README formula: 2 B × base + 16 B × trained + "
                   f"{gib(r['activation_bytes'])} activations)")  # fmt: skip
            out.append(f"| trainer, command line, 1 step | {r['wall_s']:.0f} s{step} | {gib(r['peak_rss'])} (0) "
                       f"| {gib(r['peak_anon'])} (0) | {est} |")  # fmt: skip
            continue
        est = ""
        if "adapter" in r:
            a = r["adapter"]
            est = (
                f"the adapter's weights: {a['parameters'] / 1e9:.2f} B in {', '.join(a['dtypes'])} = {gib(a['bytes'])}"
            )
        if "reserved_shape" in r:
            est = f"reserves {gib(r['reserved_bytes'])} (ComfyUI's estimate at twice {r['reserved_shape']})"
        out.append(f"| {r['run']} | {r['wall_s']:.0f} s | {gib(r['peak_rss'])} ({gib(r['rss_before'])}) "
                   f"| {gib(r['peak_anon'])} ({gib(r['anon_before'])}) | {est} |")  # fmt: skip
    out += ["", f"The partitioner's cost text: {memory_line(res['partitioner_cost'])}"]
    return "\n".join(out)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5, help="pixel frames, 1 + 4k (default 5; 81 is Wan's length)")
    parser.add_argument("--no-trainer", action="store_true", help="only the model load and the two sampler runs")
    parser.add_argument("--json", type=Path, help="where to write the figures (default .work/real-dims/...)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one == "build":
        print(json.dumps(build()))
        return
    if args.one == "loader":
        print(json.dumps(load_adapter_bf16(json.loads(args.files))))
        return
    if args.frames < 1 or (args.frames - 1) % 4:
        parser.error(f"--frames: {args.frames} is not 1 + 4k (Wan's VAE); use e.g. 5 or 81")
    res = measure(args.frames, args.no_trainer)
    path = args.json or PLACE / f"results-{args.frames}f.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"\nfigures: {path}")
    check(res)


if __name__ == "__main__":
    main(sys.argv[1:])
