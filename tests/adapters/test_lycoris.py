"""LyCORIS LoHa and LoKr files give the outputs of PEFT's own LoHa / LoKr modules (which follow LyCORIS' math),
fp32, max abs error <= 1e-4, for the U-Net (linear and conv layers, plain and CP-decomposed) and the text encoder.

PEFT's adapters are injected into the diffusers models with seeded random factors; the test writes those factors
in LyCORIS' kohya-style key layout (`lora_unet_<module>.hada_w1_a`, `.lokr_w1`, `.alpha`) for Athena to read."""

import pytest
import torch
from safetensors.torch import save_file

from tests.adapters.test_lora_parity import TEXT, TOL, UNET_LINEAR, outputs
from tests.pipelines.test_generate_parity import sd1  # noqa: F401  (fixture)

peft = pytest.importorskip("peft")
FIELDS = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
          "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
CASES = {  # name -> (config class, kwargs); LoKr rank 2 keeps every w2 low rank, where PEFT and LyCORIS scale alike
    "loha": ("LoHaConfig", dict(r=4, alpha=6.0)),
    "loha_cp": ("LoHaConfig", dict(r=4, alpha=6.0, use_effective_conv2d=True)),
    "lokr": ("LoKrConfig", dict(r=2, alpha=3.0)),
}


def inject(model, case, targets, seed, strength):
    cls, kw = CASES[case]
    config = getattr(peft, cls)(target_modules=list(targets), **kw)
    model = peft.inject_adapter_in_model(config, model, adapter_name="default")
    for module in model.modules():
        if isinstance(module, peft.tuners.lycoris_utils.LycorisLayer):
            module.set_scale("default", strength)  # scaling = strength * alpha / r
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 2)[-2] in FIELDS:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def lycoris_file(models, path, alpha):
    """PEFT's factors under LyCORIS' names: lora_unet_* / lora_te_* + the module (text_model.* for CLIP)."""
    sd = {}
    for prefix, model in models:
        for name, p in model.named_parameters():
            parts = name.split(".")
            if len(parts) > 2 and parts[-2] in FIELDS:
                module = ".".join(parts[:-2])
                if prefix == "lora_te_" and not module.startswith("text_model."):
                    module = "text_model." + module
                key = prefix + module.replace(".", "_")
                sd[f"{key}.{parts[-2]}"] = p.detach().clone()
                sd[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(sd, path)
    return path


@pytest.fixture(scope="module")
def base(sd1):  # noqa: F811
    ref, pipe = sd1
    return outputs(ref, pipe, False), {k: v.clone() for k, v in ref.unet.state_dict().items()}


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("case", sorted(CASES))
def test_lycoris_matches_peft(sd1, base, tmp_path, case, strength):  # noqa: F811
    ref, pipe = sd1
    unet_targets = UNET_LINEAR + (("conv1", "conv2") if case.startswith("loha") else ())
    inject(ref.unet, case, unet_targets, 1, strength)
    inject(ref.text_encoder, case, TEXT, 2, strength)
    try:
        path = lycoris_file([("lora_unet_", ref.unet), ("lora_te_", ref.text_encoder)], tmp_path / f"{case}.safetensors",
                            CASES[case][1]["alpha"])
        handle = pipe.load_lora(path, strength, strength)
        assert not handle.unmatched
        for (want, got), (b, _) in zip(outputs(ref, pipe, False), base[0]):
            assert (want - b).abs().max() > 10 * TOL  # PEFT's adapter is live, so the check can fail
            assert (got - want).abs().max().item() <= TOL
        handle.remove()
    finally:
        for model in (ref.unet, ref.text_encoder):
            for name, module in list(model.named_modules()):
                if isinstance(module, peft.tuners.tuners_utils.BaseTunerLayer):
                    parent, _, child = name.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
            model.__dict__.pop("peft_config", None)
    for (want, got), (b, _) in zip(outputs(ref, pipe, False), base[0]):
        assert torch.equal(want, b)  # PEFT's modules are out again
        assert (got - want).abs().max().item() <= TOL

