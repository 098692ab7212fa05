"""LoRA-family files from the wider ecosystem, read into `athena.models.lora` deltas on Athena's parameter names.

Layouts, detected per key:
- kohya / A1111 / ComfyUI: `lora_unet_<module_with_underscores>`, `lora_te_` (SD1/SD2), `lora_te1_` / `lora_te2_`
  (SDXL's CLIP-L / bigG), with `.lora_down`, `.lora_up`, `.lora_mid` (LoCon), `.alpha`; U-Net module names in either
  diffusers' spelling (kohya's trainer) or the original LDM/SGM spelling;
- LyCORIS: the same names with `.hada_*` (LoHa), `.lokr_*` (LoKr), `.diff` / `.diff_b` (full differences);
- diffusers / PEFT: `unet.`, `text_encoder.`, `text_encoder_2.` (or `base_model.model.`) + diffusers module names,
  with `.lora_A` / `.lora_B`, `.lora.down` / `.lora.up`, `.lora_linear_layer.down` / `.up`, or the old attention
  processor spelling `attn1.processor.to_q_lora.down`; PEFT's `lora_alpha` comes from the file's metadata;
- ComfyUI's own saves: `diffusion_model.` + LDM names.

The U-Net is addressed under LDM names and the text encoders under Hugging Face CLIP names, so every spelling is
reduced to those through the model-stack key map (`keymaps.sd_unet`). Modules that fit nothing are returned, never
dropped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from athena.checkpoints.io import open_weights
from athena.checkpoints.keymaps import sd_unet
from athena.errors import CheckpointError
from athena.models.lora import Delta, Full, Hadamard, Kronecker, LowRank
from athena.models.unet import UNetConfig

# key suffix -> (kind, field); longest suffixes are tried first
SUFFIXES: dict[str, tuple[str, str]] = {
    "lora_down.weight": ("lora", "down"), "lora_up.weight": ("lora", "up"), "lora_mid.weight": ("lora", "mid"),
    "lora_A.weight": ("lora", "down"), "lora_B.weight": ("lora", "up"),
    "lora.down.weight": ("lora", "down"), "lora.up.weight": ("lora", "up"),
    "lora_linear_layer.down.weight": ("lora", "down"), "lora_linear_layer.up.weight": ("lora", "up"),
    "hada_w1_a": ("loha", "w1a"), "hada_w1_b": ("loha", "w1b"), "hada_w2_a": ("loha", "w2a"),
    "hada_w2_b": ("loha", "w2b"), "hada_t1": ("loha", "t1"), "hada_t2": ("loha", "t2"),
    "lokr_w1": ("lokr", "w1"), "lokr_w1_a": ("lokr", "w1a"), "lokr_w1_b": ("lokr", "w1b"), "lokr_w2": ("lokr", "w2"),
    "lokr_w2_a": ("lokr", "w2a"), "lokr_w2_b": ("lokr", "w2b"), "lokr_t2": ("lokr", "t2"),
    "diff": ("diff", "weight"), "diff_b": ("diff", "bias"), "alpha": ("", "alpha"),
}
BY_LENGTH = sorted(SUFFIXES, key=len, reverse=True)
REQUIRED = {"lora": ("up", "down"), "loha": ("w1a", "w1b", "w2a", "w2b"), "diff": ()}
OLD_PROCESSOR = {"processor.to_q_lora": "to_q", "processor.to_k_lora": "to_k", "processor.to_v_lora": "to_v",
                 "processor.to_out_lora": "to_out.0",  # diffusers' attention processors (U-Net) ...
                 "self_attn.to_q_lora": "self_attn.q_proj", "self_attn.to_k_lora": "self_attn.k_proj",
                 "self_attn.to_v_lora": "self_attn.v_proj", "self_attn.to_out_lora": "self_attn.out_proj"}  # ... (CLIP)
PAIRS = (("w1a", "w1b"), ("w2a", "w2b"))
# family -> {kohya text prefix or diffusers component: text encoder}
TEXT_PREFIXES = {
    "sd1": {"lora_te_": "clip_l", "text_encoder.": "clip_l"},
    "sd2": {"lora_te_": "clip_h", "text_encoder.": "clip_h"},
    "sdxl": {"lora_te1_": "clip_l", "lora_te2_": "clip_g", "text_encoder.": "clip_l", "text_encoder_2.": "clip_g"},
    "sdxl_refiner": {"lora_te2_": "clip_g", "text_encoder_2.": "clip_g"},
}
UNET_SPELLINGS = ("lora_unet_", "diffusion_model.", "model.diffusion_model.", "unet.", "base_model.model.")


def component_of(module: str, family: str) -> str | None:
    """The component a module's spelling addresses ("unet" or a text encoder name), or None when no known one."""
    if module.startswith(UNET_SPELLINGS):
        return "unet"
    return next((enc for p, enc in TEXT_PREFIXES.get(family, {}).items() if module.startswith(p)), None)


@dataclass
class LoraFile:
    """A file's adapters, one delta per (module, parameter) under the file's own module names."""

    path: Path
    deltas: dict[tuple[str, str], Delta]  # (module as spelled in the file, "weight" | "bias") -> delta
    unknown_keys: list[str]  # keys of no known adapter kind (e.g. DoRA's dora_scale), reported with the unmatched


def read_lora(path: str | Path) -> LoraFile:
    """Group a file's keys by module and build each module's delta."""
    path = Path(path)
    w = open_weights(path)
    try:
        tensors = {k: w.get(k) for k in w}
        peft_alpha = _peft_alpha(w.metadata)
    finally:
        w.close()
    groups: dict[str, dict[str, Tensor]] = defaultdict(dict)
    kinds: dict[str, set[str]] = defaultdict(set)
    unknown = []
    for key, t in tensors.items():
        suffix = next((s for s in BY_LENGTH if key.endswith("." + s)), None)
        if suffix is None and key.endswith(("_lora.down.weight", "_lora.up.weight")):  # attn1.processor.to_q_lora.down
            suffix = key.rsplit(".", 2)[-2] + ".weight"
            kind, fld = "lora", suffix.split(".")[0]
        elif suffix is None:
            unknown.append(key)
            continue
        else:
            kind, fld = SUFFIXES[suffix]
        module = key[: -len(suffix) - 1]
        groups[module][fld] = t
        if kind:
            kinds[module].add(kind)
    dora = [k for k in unknown if k.endswith(".dora_scale")]
    if dora:
        raise CheckpointError(f"{path.name} is a DoRA ({len(dora)} dora_scale tensors, e.g. {dora[0]}), which Athena "
                              f"does not apply yet; use a plain LoRA / LyCORIS export of it")
    deltas: dict[tuple[str, str], Delta] = {}
    for module, f in groups.items():
        if not kinds[module]:
            unknown.append(f"{module}.alpha")
            continue
        if len(kinds[module]) > 1:
            raise CheckpointError(f"{path.name}: module '{module}' mixes adapter kinds {sorted(kinds[module])}")
        kind = kinds[module].pop()
        missing = [x for x in REQUIRED.get(kind, ()) if x not in f]
        missing += [b for a, b in PAIRS if a in f and b not in f] + [a for a, b in PAIRS if b in f and a not in f]
        if kind == "loha" and ("t1" in f) != ("t2" in f):
            missing.append("t2" if "t1" in f else "t1")
        if kind == "lokr" and "t2" in f and not ("w2a" in f and "w2b" in f):
            missing.append("w2a and w2b")
        if missing:
            raise CheckpointError(f"{path.name}: module '{module}' lacks its {', '.join(missing)} tensor(s); the file is "
                                  f"truncated or not a {kind} adapter")
        alpha = float(f["alpha"]) if "alpha" in f else peft_alpha.get(module.split(".")[0], peft_alpha.get("*"))
        if kind == "lora":
            deltas[(module, "weight")] = LowRank(f["up"], f["down"], alpha, f.get("mid"))
        elif kind == "loha":
            deltas[(module, "weight")] = Hadamard(f["w1a"], f["w1b"], f["w2a"], f["w2b"], alpha, f.get("t1"), f.get("t2"))
        elif kind == "lokr":
            if ("w1" not in f and "w1a" not in f) or ("w2" not in f and "w2a" not in f):
                raise CheckpointError(f"{path.name}: LoKr module '{module}' lacks a factor (lokr_w1 or lokr_w1_a/b, "
                                      f"lokr_w2 or lokr_w2_a/b)")
            deltas[(module, "weight")] = Kronecker(f.get("w1"), f.get("w1a"), f.get("w1b"), f.get("w2"), f.get("w2a"),
                                                   f.get("w2b"), f.get("t2"), alpha)
        else:
            for p in ("weight", "bias"):
                if p in f:
                    deltas[(module, p)] = Full(f[p])
    if not deltas:
        raise CheckpointError(f"{path.name}: not a LoRA/LyCORIS file: no key ends in a known adapter suffix "
                              f"(e.g. .lora_down.weight, .lora_A.weight, .hada_w1_a, .lokr_w1); keys: {sorted(tensors)[:5]}")
    return LoraFile(path, deltas, unknown)


def _peft_alpha(metadata: dict[str, str]) -> dict[str, float]:
    """PEFT's `lora_alpha` per component ("unet", "text_encoder", ...; "*" for a bare PEFT config) from the
    `lora_adapter_metadata` JSON that diffusers writes: {"unet.r": 4, "unet.lora_alpha": 8, ...}."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"the file's lora_adapter_metadata is not JSON ({raw[:80]!r})") from None
    alphas, patterns = {}, []
    for key, value in meta.items():
        component, _, name = key.rpartition(".")
        if name == "lora_alpha" and value is not None:
            alphas[component or "*"] = float(value)
        elif name in ("alpha_pattern", "rank_pattern") and value:
            patterns.append(key)
    if patterns:
        raise CheckpointError(f"the file's PEFT metadata sets per-module {patterns}; Athena applies one lora_alpha "
                              f"per component. Re-save the LoRA with uniform alpha, or in the kohya format (.alpha per module)")
    return alphas


def _flat(name: str) -> str:
    return name.replace(".", "_")


def alias_table(family: str, unet_cfg: UNetConfig | None, unet_modules: Iterable[str],
                text_modules: Mapping[str, Iterable[str]]) -> dict[str, tuple[str, str]]:
    """Every spelling of every adaptable module -> (component, Athena module name). Components are "unet" and the
    text encoder names (clip_l, clip_h, clip_g)."""
    table: dict[str, tuple[str, str]] = {}
    unet = set(unet_modules)
    diffusers = {}
    if unet_cfg is not None:
        diffusers = {d.removesuffix(".weight"): ldm.removesuffix(".weight")
                     for d, ldm in sd_unet.diffusers_to_ldm(unet_cfg).items() if d.endswith(".weight")}
    for ldm in unet:
        for spelled in (f"lora_unet_{_flat(ldm)}", f"diffusion_model.{ldm}", f"model.diffusion_model.{ldm}"):
            table[spelled] = ("unet", ldm)
    for d, ldm in diffusers.items():
        if ldm in unet:
            for spelled in (f"lora_unet_{_flat(d)}", f"unet.{d}", f"base_model.model.{d}"):
                table[spelled] = ("unet", ldm)
    for prefix, encoder in TEXT_PREFIXES.get(family, {}).items():
        for m in text_modules.get(encoder, ()):  # with and without transformers' `text_model.` (gone in v5)
            for name in {m, m.removeprefix("text_model.")}:
                table[f"{prefix}{_flat(name)}" if prefix.startswith("lora_") else f"{prefix}{name}"] = (encoder, m)
    return table


def _canonical(module: str) -> str:
    for old, new in OLD_PROCESSOR.items():
        if module.endswith("." + old):
            return module[: -len(old)] + new
    return module


def match(lora: LoraFile, table: dict[str, tuple[str, str]]) -> tuple[dict[str, dict[str, Delta]], list[str]]:
    """({component: {parameter name: delta}}, the file's modules that fit nothing)."""
    parts: dict[str, dict[str, Delta]] = defaultdict(dict)
    unmatched = list(lora.unknown_keys)
    for (module, param), delta in lora.deltas.items():
        target = table.get(_canonical(module))
        if target is None:
            unmatched.append(module)
            continue
        component, name = target
        parts[component][f"{name}.{param}"] = delta
    return dict(parts), sorted(set(unmatched))
