"""LoRA files in the ecosystem's layouts give the same U-Net and text-encoder outputs in Athena as in diffusers'
own loader (`load_lora_weights` + `set_adapters`), at strengths 0.5 and 1.0, fp32, max abs error <= 1e-4; and
removing them restores every weight bit for bit.

Each file is written by the test from seeded random factors, in the exact key layout of the tool named."""

import pytest
import torch
from safetensors.torch import save_file

from athena.checkpoints.keymaps import sd_unet
from tests.models.test_parity_diffusers import unet_inputs
from tests.pipelines.test_generate_parity import sd1, sdxl  # noqa: F401  (fixtures)

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
TOL = 1e-4
PROMPT = "a red fox in the snow"
UNET_LINEAR = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
UNET_CONV = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")
TEXT = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def targets(model, suffixes):
    """Module name -> module; text encoders under the real files' names (`text_model.encoder...`), which
    transformers 5 no longer uses inside the model."""
    text = not hasattr(model, "conv_in") and not any(n.startswith("text_model.") for n, _ in model.named_modules())
    plain = {n.removesuffix(".base_layer"): m for n, m in model.named_modules()  # PEFT leaves its wrappers behind
             if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    return {("text_model." if text else "") + n: m for n, m in plain.items() if n.endswith(suffixes)}


def factors(module, rank, g):
    """(down, up) of a LoRA for `module`; convs get LoCon's (r, in, kh, kw) and (out, r, 1, 1)."""
    w = module.weight
    if w.ndim == 4:
        return torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * 0.1, torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.1
    return torch.randn(rank, w.shape[1], generator=g) * 0.1, torch.randn(w.shape[0], rank, generator=g) * 0.1


def kohya_file(ref, path, *, conv=False, ldm_names=None, te_prefixes=("lora_te_",), seed=0, rank=4, alpha=2.0):
    """kohya/A1111: lora_unet_<diffusers name> (or the LDM name via `ldm_names`), lora_te*_<HF name>, .alpha."""
    g, sd = torch.Generator().manual_seed(seed), {}
    unet_targets = targets(ref.unet, UNET_LINEAR + (UNET_CONV if conv else ()))
    encoders = [ref.text_encoder] + ([ref.text_encoder_2] if len(te_prefixes) == 2 else [])
    parts = [("lora_unet_", ref.unet, unet_targets)] + [(p, e, targets(e, TEXT)) for p, e in zip(te_prefixes, encoders)]
    for prefix, _, mods in parts:
        for name, m in mods.items():
            spelled = ldm_names[name] if prefix == "lora_unet_" and ldm_names else name
            key = prefix + spelled.replace(".", "_")
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = factors(m, rank, g)
            sd[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(sd, path)
    return path


def peft_file(ref, path, *, components, seed=0, rank=4, alpha=8.0, spelling="peft"):
    """diffusers' save_lora_weights layout: unet./text_encoder./text_encoder_2. + module + .lora_A/.lora_B (PEFT)
    or the older .lora.down/.lora.up (U-Net) and .lora_linear_layer.down/.up (text); alpha in the metadata."""
    import json

    g, sd, meta = torch.Generator().manual_seed(seed), {}, {}
    for comp in components:
        model = getattr(ref, comp)
        for name, m in targets(model, UNET_LINEAR if comp == "unet" else TEXT).items():
            down, up = factors(m, rank, g)
            if spelling == "peft":
                sd[f"{comp}.{name}.lora_A.weight"], sd[f"{comp}.{name}.lora_B.weight"] = down, up
            elif comp == "unet":
                sd[f"{comp}.{name}.lora.down.weight"], sd[f"{comp}.{name}.lora.up.weight"] = down, up
            else:
                sd[f"{comp}.{name}.lora_linear_layer.down.weight"], sd[f"{comp}.{name}.lora_linear_layer.up.weight"] = down, up
        meta[f"{comp}.r"], meta[f"{comp}.lora_alpha"] = rank, alpha
        meta[f"{comp}.target_modules"] = sorted(UNET_LINEAR if comp == "unet" else TEXT)
    save_file(sd, path, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)} if spelling == "peft" else None)
    return path


def outputs(ref, pipe, xl: bool):
    """(diffusers, athena) pairs: the U-Net on fixed inputs, and the prompt's conditioning."""
    cfg = dict(ref.unet.config)
    x, t, _, extra = unet_inputs(cfg)
    context = torch.randn(2, 7, cfg["cross_attention_dim"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        if xl:
            from athena.models.unet import adm_vector
            want_u = ref.unet(x, t, context, added_cond_kwargs=extra).sample
            got_u = pipe.unet(x, t, context, adm_vector(extra["text_embeds"], extra["time_ids"]))
            want_c = ref.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
        else:
            want_u, got_u = ref.unet(x, t, context).sample, pipe.unet(x, t, context)
            want_c = ref.encode_prompt(PROMPT, "cpu", 1, False)[0]
    return [(want_u, got_u), (want_c, pipe.encode_prompt(PROMPT).context)]


def check(pair, path, strength):
    ref, pipe = pair
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base = outputs(ref, pipe, hasattr(ref, "text_encoder_2"))
    name = f"{path.stem}_{strength}".replace(".", "_")
    ref.load_lora_weights(str(path), adapter_name=name)
    try:
        ref.set_adapters([name], adapter_weights=[strength])
        handle = pipe.load_lora(path, model_strength=strength, clip_strength=strength)
        assert not handle.unmatched
        for (want, got), (b, _) in zip(outputs(ref, pipe, hasattr(ref, "text_encoder_2")), base):
            assert (want - b).abs().max() > 10 * TOL  # the LoRA changes the output: the check can fail
            assert (got - want).abs().max().item() <= TOL
        handle.remove()
    finally:
        ref.unload_lora_weights()  # takes PEFT's wrappers out too
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    for (want, got) in outputs(ref, pipe, hasattr(ref, "text_encoder_2")):
        assert (got - want).abs().max().item() <= TOL  # back to the base model


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("layout", ["kohya", "locon", "diffusers", "peft"])
def test_sd1_lora_matches_diffusers(sd1, tmp_path, layout, strength):  # noqa: F811
    ref = sd1[0]
    path = tmp_path / f"{layout}.safetensors"
    if layout in ("kohya", "locon"):
        kohya_file(ref, path, conv=layout == "locon")
    else:
        peft_file(ref, path, components=("unet", "text_encoder"), spelling=layout)
    check(sd1, path, strength)


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("layout", ["kohya", "kohya_sgm", "peft"])
def test_sdxl_lora_matches_diffusers(sdxl, tmp_path, layout, strength):  # noqa: F811
    ref, pipe = sdxl
    path = tmp_path / f"{layout}.safetensors"
    if layout == "peft":
        peft_file(ref, path, components=("unet", "text_encoder", "text_encoder_2"))
    else:
        ldm = None
        if layout == "kohya_sgm":  # SGM/LDM module names, as SDXL trainers other than kohya's write them
            ldm = {d.removesuffix(".weight"): n.removesuffix(".weight")
                   for d, n in sd_unet.diffusers_to_ldm(pipe.unet.cfg).items() if d.endswith(".weight")}
        kohya_file(ref, path, ldm_names=ldm, te_prefixes=("lora_te1_", "lora_te2_"))
    check(sdxl, path, strength)
