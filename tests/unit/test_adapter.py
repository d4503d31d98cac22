"""The PatchVSR adapter on a real-architecture Wan DiT (ComfyUI's WanModel class, tiny, random weights)."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from einops import rearrange
from harness.inprocess import tiny_wan
from safetensors.torch import load_file, save_file

from models import adapter_runtime as rt
from models.adapter import FORMAT_VERSION, AdapterConfig, PatchVSRAdapter, equal_intervals, plain_copy
from models.adapter_file import load_adapter, read_adapter, save_adapter

DIMS = (128, 3, 1, 16)  # dim, layers, heads, channels of the tiny base
MICRO = rt.micro_vector(2.0, 0.25, (0, 0, 0.5, 0.5), 2, "cpu")


@pytest.fixture(scope="module")
def dm():
    return tiny_wan(layers=DIMS[1])


def make(dm, **kw):
    cfg = AdapterConfig.for_base(*DIMS, patch_k=2, global_k=2, lora_rank=4, **kw)
    return PatchVSRAdapter(cfg, dm.blocks, dm.patch_embedding)


def inputs(seed=0, hw=(12, 16)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 2, *hw, generator=g)
    lr = torch.randn(2, 16, 2, *hw, generator=g)
    glob = torch.randn(2, 16, 2, 6, 8, generator=g)
    mask = torch.zeros(2, 1, 2, 6, 8)
    mask[..., :3, :4] = 1
    return x, torch.tensor([0.7, 0.2]), torch.randn(2, 8, 4096, generator=g), lr, glob, mask


def test_equal_intervals():
    assert equal_intervals(30, 5) == (0, 6, 12, 18, 24) and equal_intervals(3, 3) == (0, 1, 2)


@torch.no_grad()
@pytest.mark.parametrize("inside", [True, False], ids=["gca-inside", "gca-after"])
@pytest.mark.parametrize("hw", [(12, 16), (11, 13)], ids=["even", "odd"])  # odd: the last patch of a 1080p frame
def test_untrained_adapter_is_an_exact_identity(dm, hw, inside):
    adapter = make(dm, gca_in_cross_attention=inside)
    x, t, ctx, lr, glob, mask = inputs(hw=hw)
    base = dm(x, t * 1000, ctx)
    hooks = rt.add_lora_hooks(adapter, dm.blocks)
    try:
        call = rt.compute_call(dm, adapter, lr, MICRO, glob, mask, ctx)
        patched = rt.forward(dm, adapter, x, t, ctx, call)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(patched, base), "zero-initialised outputs must leave the base bit for bit unchanged"
    assert call.tokens.shape == (2, 2, 128), "6x8 cells -> 3x4 tokens -> merge -> 2x2 -> merge -> 1 per frame"


@torch.no_grad()
def test_every_part_reaches_the_output(dm):
    """With each zero-initialised output woken up alone, the output moves: nothing is dead weight."""
    x, t, ctx, lr, glob, mask = inputs()
    base = dm(x, t * 1000, ctx)
    parts = {
        "patch branch": ("patch_branch.proj.0.weight", True),
        "G-CA inside": ("gca.1.v.weight", True),
        "G-CA after the block": ("gca.1.o.weight", False),
        "micro": ("micro.out.weight", True),
        "LoRA": ("lora.1__ffn_2.up", True),
    }
    for name, (param, inside) in parts.items():
        adapter = make(dm, gca_in_cross_attention=inside)
        adapter.get_parameter(param).normal_(0, 0.05)
        hooks = rt.add_lora_hooks(adapter, dm.blocks)
        call = rt.compute_call(dm, adapter, lr, MICRO, glob, mask, ctx)
        out = rt.forward(dm, adapter, x, t, ctx, call)
        for h in hooks:
            h.remove()
        assert (out - base).abs().max() > 1e-6, f"{name} does not change the output"


@pytest.mark.parametrize("inside", [True, False], ids=["gca-inside", "gca-after"])
def test_checkpointed_blocks_give_the_same_gradients(dm, inside):
    """The trainer recomputes every block in the backward pass. Through the host's original_block it
    recomputed the last block in place of each one (the host's closure reads its loop variable late): the
    loss was right and every gradient below the last block wrong, which made G-CA inside the text
    cross-attention diverge on the proof (README, G-CA's placement)."""
    from harness.inprocess import training_mode

    adapter = wake(make(dm, gca_in_cross_attention=inside))
    x, t, ctx, lr, glob, mask = inputs()
    dm.requires_grad_(False)
    grads = []
    for checkpoint in (False, True):
        adapter.zero_grad(set_to_none=True)
        hooks = rt.add_lora_hooks(adapter, dm.blocks)
        try:
            with training_mode():
                call = rt.compute_call(dm, adapter, lr, MICRO, glob, mask, ctx)
                rt.forward(dm, adapter, x, t, ctx, call, checkpoint=checkpoint).square().mean().backward()
        finally:
            for h in hooks:
                h.remove()
        grads.append({n: p.grad for n, p in adapter.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def test_micro_conditions_only_shift_and_stay_bounded(dm):
    """However large its weights grow, the micro-condition layer offsets only the two shift chunks of the
    time modulation, by at most MICRO_BOUND (offsets of scale and gate made training collapse)."""
    from models.adapter import MICRO_BOUND

    adapter = make(dm)
    with torch.no_grad():
        adapter.micro.out.weight.normal_(0, 100.0)
    delta = adapter.micro(rt.micro_vector(2.0, 0.25, (0, 0, 0.5, 0.5), 3, "cpu"))
    assert delta.shape == (3, 1, 6, DIMS[0])
    assert delta[:, :, [1, 2, 4, 5]].abs().max() == 0
    assert 0.5 * MICRO_BOUND < delta.abs().max() <= MICRO_BOUND


def wake(adapter, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return adapter


def test_file_round_trips_every_tensor_exactly(dm, tmp_path):
    adapter = wake(make(dm))
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    again = load_adapter(path, dm.blocks, dm.patch_embedding, DIMS)
    a, b = adapter.file_state_dict(), again.file_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.cfg == adapter.cfg
    # The LoRA part uses ComfyUI's key naming, so ComfyUI's own LoRA loader can apply it.
    assert "diffusion_model.blocks.0.self_attn.q.lora_up.weight" in load_file(str(path))


def test_loader_reads_the_file_one_tensor_at_a_time(dm, tmp_path, monkeypatch):
    """A real-size adapter file holds float32 weights (2.3 GB for Wan 2.1 1.3B, 24 GB for 14B): the loader
    holds at most the tensor it copies and the next one it reads, never the whole file beside the adapter."""
    import weakref

    import models.adapter_file as af

    path = save_adapter(wake(make(dm)), tmp_path / "a.safetensors")
    alive, most, real_open = [], [0], af.safe_open

    class Tracking:
        def __init__(self, *args, **kwargs):
            self.f = real_open(*args, **kwargs)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def get_tensor(self, key):
            t = self.f.get_tensor(key)
            alive.append(weakref.ref(t))
            most[0] = max(most[0], sum(r() is not None for r in alive))
            return t

    monkeypatch.setattr(af, "safe_open", Tracking)
    again = load_adapter(path, dm.blocks, dm.patch_embedding, DIMS, torch.bfloat16)
    assert len(alive) == len(again.file_tensors()), "every tensor of the file is read"
    assert len(alive) > 10 and most[0] <= 2, f"the loader held {most[0]} of the file's {len(alive)} tensors at once"


def rewrite(path, tensors=None, meta=None):
    cfg, t = read_adapter(path)
    m = {"patchvsr": cfg.to_json()} if meta is None else meta
    save_file(tensors if tensors is not None else t, str(path), metadata=m)


@pytest.mark.parametrize("damage,message", [
    ("newer", f"uses file format {FORMAT_VERSION + 1}; this pack reads up to {FORMAT_VERSION}"),
    ("older", "uses file format 1, from before this pack gave the global branch the text prompt"),
    ("base", "was trained for another base model: base_layers 3 (model: 4)"),
    ("missing", "1 missing keys"),
    ("unexpected", "1 unexpected keys ['extra.weight']"),
    ("shape", "tensors of the wrong shape"),
    ("corrupt", "is not a readable safetensors file"),
    ("not_patchvsr", "has no PatchVSR config in its metadata"),
    ("nan", "holds NaN or infinite weights"),
])  # fmt: skip
def test_loader_rejects_bad_files_with_what_differs(dm, tmp_path, damage, message):
    path = save_adapter(wake(make(dm)), tmp_path / "a.safetensors")
    cfg, t = read_adapter(path)
    dims = DIMS
    if damage in ("newer", "older"):
        raw = json.loads(cfg.to_json()) | {"format_version": FORMAT_VERSION + 1 if damage == "newer" else 1}
        rewrite(path, meta={"patchvsr": json.dumps(raw)})
    elif damage == "base":
        dims = (128, 4, 1, 16)
    elif damage == "missing":
        t.pop(next(iter(t)))
        rewrite(path, t)
    elif damage == "unexpected":
        rewrite(path, t | {"extra.weight": torch.zeros(1)})
    elif damage == "shape":
        k = "micro.out.weight"
        rewrite(path, t | {k: torch.zeros(3, 3)})
    elif damage == "corrupt":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "not_patchvsr":
        rewrite(path, meta={"format": "lora"})
    elif damage == "nan":
        rewrite(path, t | {"micro.out.bias": torch.full_like(t["micro.out.bias"], float("nan"))})
    with pytest.raises(ValueError, match=re.escape(message)):
        load_adapter(path, dm.blocks, dm.patch_embedding, dims)


class ScaledFp8Linear(torch.nn.Module):
    """A stand-in for a host's scaled-fp8 linear: fp8 storage, a per-tensor scale applied in forward, and not
    an nn.Linear (as ComfyUI 0.33's quantized linear is not)."""

    def __init__(self, lin: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        scale = lin.weight.abs().max() / torch.finfo(torch.float8_e4m3fn).max
        self.weight = torch.nn.Parameter((lin.weight / scale).to(torch.float8_e4m3fn), requires_grad=False)
        self.scale_weight = torch.nn.Parameter(scale, requires_grad=False)
        self.bias = lin.bias

    def real(self) -> torch.Tensor:
        return self.weight.float() * self.scale_weight

    def forward(self, x):
        return torch.nn.functional.linear(x, self.real().to(x), self.bias.to(x))


@torch.no_grad()
def test_plain_copy_of_a_scaled_fp8_block_is_stock_layers_in_the_compute_dtype(dm):
    import copy

    block = copy.deepcopy(dm.blocks[0])
    for name, lin in [(n, m) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]:
        parent, _, leaf = name.rpartition(".")
        setattr(block.get_submodule(parent), leaf, ScaledFp8Linear(lin))

    def weight_of(layer, name):
        return layer.real() if name == "weight" and isinstance(layer, ScaledFp8Linear) else getattr(layer, name)

    plain = plain_copy(block, torch.float32, weight_of)
    assert not any(isinstance(m, ScaledFp8Linear) for m in plain.modules())
    assert {v.dtype for v in plain.state_dict().values()} == {torch.float32}, "fp8 storage was copied"
    assert plain.state_dict().keys() == plain_copy(dm.blocks[0], torch.float32).state_dict().keys()
    x, e = torch.randn(1, 24, 128), torch.randn(1, 6, 128)
    freqs = dm.rope_encode(1, 8, 12, device="cpu", dtype=torch.float32)
    ctx = torch.randn(1, 4, 128)
    want = block(x, e=e, freqs=freqs, context=ctx, context_img_len=None)
    assert torch.allclose(plain(x, e=e, freqs=freqs, context=ctx, context_img_len=None), want, atol=1e-5)
    assert isinstance(block.self_attn.q, ScaledFp8Linear), "the source block was changed"


class ReferenceCrossAttention(torch.nn.Module):
    """The supplement's G-CA placement written out by hand, as the test's reference for the override wiring:
    the block's text cross-attention with G-CA's attention output added before its output projection."""

    def __init__(self, ca, gca, tokens):
        super().__init__()
        self.ca, self.gca, self.tokens = ca, gca, tokens

    def forward(self, x, context, transformer_options={}, **kwargs):
        ca = self.ca
        q, k, v = ca.norm_q(ca.q(x)), ca.norm_k(ca.k(context)), ca.v(context)
        heads = (rearrange(a, "b l (h d) -> b h l d", h=ca.num_heads) for a in (q, k, v))
        text = rearrange(torch.nn.functional.scaled_dot_product_attention(*heads), "b h l d -> b l (h d)")
        return ca.o(text + self.gca(q, self.tokens))


@torch.no_grad()
def test_gca_sits_inside_the_text_cross_attention_and_shares_its_query(dm):
    """Through the block patch and the attention override, G-CA's output joins the text cross-attention's
    before its output projection and before the FFN (supplement: GCA in the SCA blocks), with the text
    cross-attention's query."""
    import copy

    adapter = make(dm, gca_in_cross_attention=True)
    for gca in adapter.gca:
        gca.v.weight.normal_(0, 0.5)  # G-CA alone woken: hints and micro-conditions stay exactly zero
    x, t, ctx, lr, glob, mask = inputs()
    call = rt.compute_call(dm, adapter, lr, MICRO, glob, mask, ctx)
    patched = rt.forward(dm, adapter, x, t, ctx, call)
    ref = copy.deepcopy(dm)  # the fixture's model stays as built
    for block, gca in zip(ref.blocks, adapter.gca):
        block.cross_attn = ReferenceCrossAttention(block.cross_attn, gca, call.tokens)
    want = ref(x, t * 1000, ctx)
    assert (patched - dm(x, t * 1000, ctx)).abs().max() > 1e-3, "G-CA must change the output here"
    torch.testing.assert_close(patched, want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_patch_branch_shared_by_cond_and_uncond_rows_equals_recomputing_it(dm):
    """The patch branch runs once for a patch's cond and uncond rows (AdapterCall.repeat): the same output
    as running it on every row."""
    adapter = wake(make(dm))
    x, t, ctx, lr, glob, mask = inputs()
    one = lr[:1]
    per_row = rt.compute_call(dm, adapter, one.expand(2, -1, -1, -1, -1), MICRO, glob[:1].expand(2, -1, -1, -1, -1),
                              mask[:1].expand(2, -1, -1, -1, -1), ctx)  # fmt: skip
    shared = rt.AdapterCall(tuple(rt.patch_hints(dm, adapter, one)), per_row.tokens, per_row.micro, repeat=2)
    assert shared.hints[0].shape[0] == 1 and per_row.hints[0].shape[0] == 2
    a = rt.forward(dm, adapter, x, t, ctx, per_row)
    b = rt.forward(dm, adapter, x, t, ctx, shared)
    # Equal up to float rounding: the CPU's matmul kernels round a 1-row and a 2-row batch differently
    # (measured: at most 1.4e-6 on outputs of size ~1).
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_global_branch_reads_the_text_prompt(dm):
    """Paper (Text Prompts): the base and the global branch get the text prompt, only the patch branch a
    fixed one. Two prompts give two sets of global tokens; the patch hints do not depend on the prompt."""
    adapter = make(dm)
    _, _, ctx, lr, glob, mask = inputs()
    same_glob, same_mask = glob[:1].expand(2, -1, -1, -1, -1), mask[:1].expand(2, -1, -1, -1, -1)
    tokens = rt.global_tokens(dm, adapter, same_glob, same_mask, ctx)
    assert (tokens[0] - tokens[1]).abs().max() > 1e-4
    again = rt.global_tokens(dm, adapter, same_glob, same_mask, ctx[[0, 0]])
    assert torch.equal(again[0], again[1])


def test_inference_adapter_runs_in_the_compute_dtype(dm, tmp_path):
    """The loader's adapter (cast_for_inference) holds and runs its own layers in the model's compute dtype,
    only the patch embeddings stay float32; the result stays close to the float32 adapter's."""
    import comfy.ldm.wan.model
    import comfy.ops

    path = save_adapter(wake(make(dm), seed=3), tmp_path / "a.safetensors")
    # ComfyUI computes a bf16 model with weights cast per layer (manual_cast), as on a GPU.
    cast = comfy.ldm.wan.model.WanModel(model_type="t2v", dim=128, ffn_dim=256, num_heads=1, num_layers=DIMS[1],
                                        in_dim=16, out_dim=16, operations=comfy.ops.manual_cast)  # fmt: skip
    cast.load_state_dict(dm.state_dict())
    bf = torch.bfloat16
    adapter = load_adapter(path, cast.blocks, cast.patch_embedding, DIMS, bf).cast_for_inference(bf)
    own = {n: p.dtype for n, p in adapter.named_parameters() if not n.startswith("lora.")}
    assert {d for n, d in own.items() if ".embed." not in n} == {bf}
    assert {d for n, d in own.items() if ".embed." in n} == {torch.float32}
    x, t, ctx, lr, glob, mask = inputs()
    with torch.no_grad():
        call = rt.compute_call(cast, adapter, lr.to(bf), MICRO, glob.to(bf), mask.to(bf), ctx.to(bf))
        assert {h.dtype for h in call.hints} == {bf} and call.tokens.dtype == bf and call.micro.dtype == bf
        out = rt.forward(cast, adapter, x.to(bf), t, ctx.to(bf), call)
        ref32 = load_adapter(path, dm.blocks, dm.patch_embedding, DIMS)
        want = rt.forward(dm, ref32, x, t, ctx, rt.compute_call(dm, ref32, lr, MICRO, glob, mask, ctx))
    assert out.dtype == bf
    assert (out.float() - want).norm() / want.norm() < 0.05


@torch.no_grad()
def test_gca_composes_with_another_extensions_attention_override(dm):
    """An attention override another extension set (an attention-kernel node) still computes every attention
    of the base, and G-CA is added on top of its result."""
    adapter = make(dm, gca_in_cross_attention=True)
    for gca in adapter.gca:
        gca.v.weight.normal_(0, 0.5)
    x, t, ctx, lr, glob, mask = inputs()
    call = rt.compute_call(dm, adapter, lr, MICRO, glob, mask, ctx)
    seen = []

    def theirs(func, *args, **kwargs):
        seen.append(args[1].shape[1])  # key length: video tokens (self-attention) or text tokens
        return func(*args, **kwargs)

    opts = {"patches_replace": {"dit": rt.block_patches(adapter, dm.blocks)}, rt.CALL_KEY: call,
            "optimized_attention_override": theirs}  # fmt: skip
    out = dm(x, t * 1000, ctx, transformer_options=opts)
    assert seen[1::2] == [ctx.shape[1]] * DIMS[1] and len(seen) == 2 * DIMS[1]
    torch.testing.assert_close(out, rt.forward(dm, adapter, x, t, ctx, call))


def test_checkpointed_branches_give_the_same_gradients_and_recompute(dm):
    """Training with set_grad_checkpointing(True) recomputes every copied branch block in the backward pass
    (each runs twice per step instead of keeping its activations) and gives the same loss and gradients."""
    from harness.inprocess import training_mode

    x, t, ctx, lr, glob, mask = inputs()
    grads, runs = {}, {}
    for on in (False, True):
        torch.manual_seed(0)
        adapter = wake(make(dm))  # every zero-initialised output woken, so every part has a gradient
        adapter.set_grad_checkpointing(on)
        blocks = [*adapter.patch_branch.blocks, *(b for lvl in adapter.global_branch.levels for b in lvl)]
        count = [0]
        # A pre-hook: the recomputation stops early, once it has what the backward needs (torch's early stop).
        handles = [b.register_forward_pre_hook(lambda *a, c=count: c.__setitem__(0, c[0] + 1)) for b in blocks]
        hooks = rt.add_lora_hooks(adapter, dm.blocks)
        try:
            with training_mode():  # autograd through the host's kernels (ComfyUI 0.33's RoPE needs the flag)
                call = rt.compute_call(dm, adapter, lr, MICRO, glob, mask, ctx)
                rt.forward(dm, adapter, x, t, ctx, call, checkpoint=True).square().mean().backward()
        finally:
            for h in hooks + handles:
                h.remove()
        runs[on] = count[0] / len(blocks)
        grads[on] = {k: p.grad.clone() for k, p in adapter.named_parameters() if p.grad is not None}
    assert runs == {False: 1, True: 2}, runs
    assert grads[True].keys() == grads[False].keys() and grads[False]
    for k in grads[False]:
        torch.testing.assert_close(grads[True][k], grads[False][k], rtol=1e-4, atol=1e-6, msg=k)


@torch.no_grad()
@pytest.mark.parametrize("budget", ["all", "two patches", "none"])
def test_hints_are_made_once_per_patch_and_run(dm, budget):
    """The patch branch's input (the LR patch latent noised once to t = 0.25) and time are the same at every
    step, so its hints are kept for the run: a rotation of layouts over several steps runs the branch once
    per distinct patch, and every call gets exactly the hints a fresh run of the branch gives. A budget too
    small for all of them keeps the first ones and runs the branch again for the rest; none runs it at
    every call."""
    from models.adapter_inputs import AdapterInputs, hint_bytes
    from models.blend import StitchConfig
    from models.joint import FusionSchedule, crop
    from models.plan import PlanConfig, make_plan

    adapter = make(dm)
    adapter.patch_branch.proj[0].weight.normal_(0, 0.05)  # hints that are not zero, so a mix-up shows
    plan = make_plan(PlanConfig((2, 12, 16), (6, 8), 21))
    schedule = FusionSchedule.build(plan, StitchConfig(), None)
    patches = sorted({p for jm in schedule.layouts for b in jm.batches for p in b}, key=repr)
    one = hint_bytes(adapter.cfg, 128, patches[:1], dtype_bytes=4)
    budgets = {"all": hint_bytes(adapter.cfg, 128, patches, dtype_bytes=4), "two patches": 2 * one, "none": 0}
    g = torch.Generator().manual_seed(3)
    lr, glob = torch.randn(1, 16, 2, 12, 16, generator=g), torch.randn(1, 16, 2, 6, 8, generator=g)
    masks = torch.ones(len(plan.boxes), 6, 8)
    ins = AdapterInputs(adapter, dm, plan, lr, glob, torch.randn(glob.shape, generator=g), masks, 0.15,
                        lambda x: x * 0.5, seed=0, hint_budget=budgets[budget])  # fmt: skip
    calls = 0
    steps = 5
    for step in range(steps):
        for batch in schedule.at(step, steps).batches:
            got = ins.patch_hints(batch, "cpu", torch.float32)
            lr_crops = torch.cat([crop(ins.lr_noised, *p) for p in batch])
            want = rt.patch_hints(dm, adapter, lr_crops)  # the branch run afresh on these patches
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (budget, step, batch)
            calls += len(batch)
    distinct = len({p for i in range(steps) for b in schedule.at(i, steps).batches for p in b})
    assert ins.hint_cache_bytes <= budgets[budget]
    if budget == "all":
        assert ins.branch_runs == distinct, (ins.branch_runs, distinct)
    elif budget == "two patches":
        assert len(ins.hints) == 2 and distinct < ins.branch_runs < calls
    else:
        assert ins.branch_runs == calls and not ins.hints


# --- hosts newer than the test hosts (read against upstream ComfyUI 0.38) -----------------------------------
class ComfyAttention(torch.nn.Module):
    """A stand-in for upstream ComfyUI's ComfyAttention (comfy/ldm/modules/attention.py), which neither test
    host has: an attention layer's preferred backend, read from and written to the state dict as a uint8
    JSON `config` tensor."""

    def __init__(self, config=None, function=None):
        super().__init__()
        self.config, self.function = config, function

    def _load_from_state_dict(self, state_dict, prefix, *args):
        raw = state_dict.pop(prefix + "config", None)
        self.config = None if raw is None else json.loads(raw.numpy().tobytes())
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.config is not None:
            destination[prefix + "config"] = torch.tensor(list(json.dumps(self.config).encode()), dtype=torch.uint8)


def with_attention_config(dm):
    """A copy of the tiny base as an upstream checkpoint with int8 attention loads: every attention layer
    carries its host attention config."""
    import copy

    base = copy.deepcopy(dm)
    for block in base.blocks:
        for layer in (block.self_attn, block.cross_attn):
            layer.comfy_attention = ComfyAttention({"attention": "comfy_kitchen_int8"}, function=print)
    return base


def test_copied_blocks_and_the_adapter_file_carry_no_host_attention_config(dm, tmp_path):
    """Copies drop the base's attention config, so the adapter file holds weights only: the same keys as an
    adapter made on a host without it, and it loads on either (loading does not require the config)."""
    base = with_attention_config(dm)
    assert "blocks.0.self_attn.comfy_attention.config" in base.state_dict()
    copy_ = plain_copy(base.blocks[0], torch.float32)
    assert copy_.self_attn.comfy_attention.config is None and copy_.cross_attn.comfy_attention.function is None
    assert not any(k.endswith(".config") for k in copy_.state_dict())
    assert base.blocks[0].self_attn.comfy_attention.config is not None, "the base's own layer was changed"
    cfg = AdapterConfig.for_base(*DIMS, patch_k=2, global_k=2, lora_rank=4)
    adapter = wake(PatchVSRAdapter(cfg, base.blocks, base.patch_embedding))
    # A host that sets the config on layers after the copy: the file still holds weights only.
    adapter.patch_branch.blocks[0].self_attn.comfy_attention.config = {"attention": "comfy_kitchen_int8"}
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    keys = set(load_file(str(path)))
    assert keys == set(make(dm).file_state_dict()) and not any("comfy_attention" in k for k in keys)
    for host in (dm, base):  # a host without the attention config, and one with it
        again = load_adapter(path, host.blocks, host.patch_embedding, DIMS)
        a, b = adapter.file_state_dict(), again.file_state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Container:
    """Upstream's AttentionTensorContainer (ComfyUI 0.33 has the same class, tested with it below): a
    tensor a backend takes out once."""

    __slots__ = ("tensor",)

    def __init__(self, tensor):
        self.tensor = tensor

    def peek(self):
        assert self.tensor is not None, "attention tensor container has already been consumed"
        return self.tensor

    def take(self):
        tensor, self.tensor = self.peek(), None
        return tensor


def upstream_wrap_attn(func, container_function=None):
    """The dispatch of upstream ComfyUI 0.38's wrap_attn (comfy/ldm/modules/attention.py), which neither test
    host runs with preferred backends: the override first (its container_function with the containers, else
    the tensors taken out, the preferred backend dropped), then the preferred backend, then the function's
    own container path."""

    def wrapper(*args, **kwargs):
        preferred = kwargs.pop("preferred_attention", None)
        containers = isinstance(args[0], Container)
        if rt.ATTENTION_REENTRY_KEY not in kwargs:
            kwargs = {**kwargs, rt.ATTENTION_REENTRY_KEY: True}
            override = kwargs.get("transformer_options", {}).get("optimized_attention_override")
            if override is not None:
                if containers and hasattr(override, "container_function"):
                    return override.container_function(*args, **kwargs)
                if containers:
                    args = tuple(c.take() for c in args[:3]) + args[3:]
                return override(func, *args, **kwargs)
            if preferred is not None and preferred.function is not None:
                return preferred.function(*args, **kwargs)
        if containers and container_function is not None:
            return container_function(*args, **kwargs)
        if containers:
            args = tuple(c.take() for c in args[:3]) + args[3:]
        return func(*args, **kwargs)

    return wrapper


def sdpa(q, k, v, heads, **kwargs):
    """q: [B, L, D], k, v: [B, Lk, D] -> [B, L, D]."""
    split = (rearrange(a, "b l (h d) -> b h l d", h=heads) for a in (q, k, v))
    return rearrange(torch.nn.functional.scaled_dot_product_attention(*split), "b h l d -> b l (h d)")


def recording_backend(name, calls):
    """An attention backend that records whether it got containers or tensors (as upstream's int8 backend,
    which has a container path of its own)."""

    def on_tensors(q, k, v, heads, **kwargs):
        calls.append((name, "tensors"))
        return sdpa(q, k, v, heads)

    def on_containers(q, k, v, heads, **kwargs):
        calls.append((name, "containers"))
        return sdpa(q.take(), k.take(), v.take(), heads)

    return upstream_wrap_attn(on_tensors, on_containers)


def block_attentions(override, attention, preferred, q, k, v, text):
    """A Wan block's two attention calls as upstream's blocks make them: self-attention, then the text
    cross-attention, each with containers and its layer's preferred backend."""
    opts = {"optimized_attention_override": override}
    self_out = attention(Container(q), Container(k), Container(v), 1, preferred_attention=preferred[0],
                         transformer_options=opts)  # fmt: skip
    cross_out = attention(Container(q), Container(text), Container(text), 1, preferred_attention=preferred[1],
                          transformer_options=opts)  # fmt: skip
    return self_out, cross_out


@torch.no_grad()
@pytest.mark.parametrize("preferred", [True, False], ids=["preferred", "no-preferred"])
def test_gca_passes_containers_and_preferred_backends_through(dm, preferred):
    """With G-CA inside the cross-attention, every attention of the block still reaches the layer's
    preferred backend (or the host's own container path) with its containers, and G-CA is added with the
    cross-attention's query; an override without a container_function would send them all to the default
    attention with plain tensors."""
    adapter = make(dm, gca_in_cross_attention=True)
    gca = adapter.gca[0]
    gca.v.weight.normal_(0, 0.5)
    g = torch.Generator().manual_seed(0)
    q, k, v, text, tokens = (torch.randn(2, n, 128, generator=g) for n in (24, 24, 24, 8, 4))
    calls = []
    attention = recording_backend("default", calls)
    layers = (SimpleNamespace(function=recording_backend("self", calls)), SimpleNamespace(function=None))
    layers = layers if preferred else (None, None)
    override = rt.gca_override(gca, tokens, text.shape[1], None, layers, attention)
    self_out, cross_out = block_attentions(override, attention, layers, q, k, v, text)
    assert calls == [("self" if preferred else "default", "containers"), ("default", "containers")], calls
    torch.testing.assert_close(self_out, sdpa(q, k, v, 1))
    torch.testing.assert_close(cross_out, sdpa(q, text, text, 1) + gca(q, tokens))
    # Why the container_function: without one the host takes the tensors out and skips the preferred backend.
    calls.clear()
    block_attentions(lambda func, *a, **kw: func(*a, **kw), attention, layers, q, k, v, text)
    assert calls == [("default", "tensors"), ("default", "tensors")], calls


@torch.no_grad()
def test_gca_hands_another_extensions_container_override_its_containers(dm):
    """An attention override another extension set with a container_function (upstream's attention-backend
    nodes copy their backend's) still gets every attention's containers, as it would without G-CA."""
    adapter = make(dm, gca_in_cross_attention=True)
    g = torch.Generator().manual_seed(0)
    q, k, v, text, tokens = (torch.randn(2, n, 128, generator=g) for n in (24, 24, 24, 8, 4))
    calls = []
    attention, theirs_backend = recording_backend("default", calls), recording_backend("theirs", calls)

    def theirs(func, *args, **kwargs):
        return theirs_backend(*args, **kwargs)

    theirs.container_function = theirs_backend
    preferred = (SimpleNamespace(function=recording_backend("self", calls)), None)
    override = rt.gca_override(adapter.gca[0], tokens, text.shape[1], theirs, preferred, attention)
    _, cross_out = block_attentions(override, attention, preferred, q, k, v, text)
    assert calls == [("theirs", "containers"), ("theirs", "containers")], calls  # theirs outranks preferred
    torch.testing.assert_close(cross_out, sdpa(q, text, text, 1) + adapter.gca[0](q, tokens))


@torch.no_grad()
def test_gca_takes_this_hosts_attention_containers(dm):
    """On a host that has AttentionTensorContainer (ComfyUI 0.33; the pinned host passes plain tensors, the
    override's tensor path that the tests above run through its Wan blocks), its own attention function
    hands G-CA's override the containers, which reach another extension's container_function."""
    import comfy.ldm.modules.attention as host

    if not hasattr(host, "AttentionTensorContainer"):
        pytest.skip("this host passes attention plain tensors: no container protocol to follow")
    adapter = make(dm, gca_in_cross_attention=True)
    gca = adapter.gca[0]
    gca.v.weight.normal_(0, 0.5)
    g = torch.Generator().manual_seed(0)
    q, k, v, text, tokens = (torch.randn(2, n, 128, generator=g) for n in (24, 24, 24, 8, 4))
    seen = []

    def theirs(func, *args, **kwargs):
        seen.append("tensors")
        return func(*args, **kwargs)

    def theirs_containers(*args, **kwargs):
        seen.append(type(args[0]).__name__)
        return host.optimized_attention(*args, **kwargs)  # the reentry keyword: the host's own container path

    theirs.container_function = theirs_containers
    override = rt.gca_override(gca, tokens, text.shape[1], theirs, (), host.optimized_attention)
    opts = {"optimized_attention_override": override}
    C = host.AttentionTensorContainer
    self_out = host.optimized_attention(C(q), C(k), C(v), 1, transformer_options=opts)
    cross_out = host.optimized_attention(C(q), C(text), C(text), 1, transformer_options=opts)
    assert seen == ["AttentionTensorContainer"] * 2, seen
    torch.testing.assert_close(self_out, host.optimized_attention(q, k, v, 1))
    torch.testing.assert_close(cross_out, host.optimized_attention(q, text, text, 1) + gca(q, tokens))


@torch.no_grad()
def test_gca_in_this_hosts_blocks_keeps_each_layers_preferred_backend(dm):
    """Through the real Wan blocks of this host (plain tensors to attention): with attention layers that
    carry a preferred backend, as upstream's do, G-CA's override runs every attention through it."""
    import copy

    import comfy.ldm.modules.attention as host

    adapter = make(dm, gca_in_cross_attention=True)
    for gca in adapter.gca:
        gca.v.weight.normal_(0, 0.5)
    x, t, ctx, lr, glob, mask = inputs()
    call = rt.compute_call(dm, adapter, lr, MICRO, glob, mask, ctx)
    calls = []

    def backend(q, k, v, heads, **kwargs):  # the host's reentry keyword: no second dispatch
        calls.append(k.shape[1])
        return host.optimized_attention(q, k, v, heads, **kwargs)

    base = copy.deepcopy(dm)
    for block in base.blocks:
        block.self_attn.comfy_attention = block.cross_attn.comfy_attention = SimpleNamespace(function=backend)
    out = rt.forward(base, adapter, x, t, ctx, call)
    assert calls[1::2] == [ctx.shape[1]] * DIMS[1] and len(calls) == 2 * DIMS[1], calls
    torch.testing.assert_close(out, rt.forward(dm, adapter, x, t, ctx, call))
