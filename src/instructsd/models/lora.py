"""LoRA (Hu et al. 2021) on the UNet's attention projections, with conv_in trained fully.

InstructPix2Pix's conv_in reads the 4 extra input-image channels; a model started from plain
Stable Diffusion has those weights at zero, so freezing conv_in (as the public LoRA research
script does — and then saves a different conv_in than it trained) leaves the model blind to
the input image. Here conv_in is a full trainable parameter, saved beside the adapters.

An adapter folder holds ``adapter_model.safetensors`` (peft's LoRA tensors),
``conv_in.safetensors`` and ``adapter_config.json`` (rank, alpha, targets, base model).
:func:`merge_adapter` folds it into a plain UNet that stock diffusers loads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from instructsd.errors import InstructSDError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
CONV_IN_WEIGHTS = "conv_in.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError as err:  # optional extra
        raise InstructSDError("LoRA needs peft: pip install 'instructsd[lora]' (or pip install peft)") from err
    return peft


def add_lora(unet: UNet2DConditionModel, rank: int, alpha: float | None, targets: list[str]) -> UNet2DConditionModel:
    """Freeze the UNet, inject LoRA adapters into ``targets``, and unfreeze conv_in."""
    peft = _peft()
    unet.requires_grad_(False)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(targets))
    unet.add_adapter(config)
    unet.conv_in.requires_grad_(True)
    return unet


def lora_state(unet: UNet2DConditionModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(adapter tensors, conv_in tensors) of a LoRA UNet, detached on CPU."""
    peft = _peft()
    adapters = peft.get_peft_model_state_dict(unet)
    conv = {k: v for k, v in unet.conv_in.state_dict().items()}
    detach = lambda d: {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in d.items()}  # noqa: E731
    return detach(adapters), detach(conv)


def save_adapter(unet: UNet2DConditionModel, folder: str | Path, *, rank: int, alpha: float | None, targets: list[str],
                 base_model: str, expanded_conv_in: bool) -> Path:
    """Write the adapter folder atomically (temp folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    adapters, conv = lora_state(unet)
    save_file(adapters, str(tmp / ADAPTER_WEIGHTS))
    save_file(conv, str(tmp / CONV_IN_WEIGHTS))
    (tmp / ADAPTER_CONFIG).write_text(json.dumps({
        "rank": rank, "alpha": alpha or rank, "target_modules": list(targets), "base_model": base_model,
        "expanded_conv_in": expanded_conv_in, "unet_in_channels": unet.config.in_channels,
    }, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_adapter(unet: UNet2DConditionModel, folder: str | Path) -> UNet2DConditionModel:
    """Inject the saved adapters and conv_in into an 8-channel ``unet`` of the same base."""
    peft = _peft()
    folder = Path(folder)
    for name in (ADAPTER_WEIGHTS, CONV_IN_WEIGHTS, ADAPTER_CONFIG):
        if not (folder / name).is_file():
            raise InstructSDError(f"LoRA folder '{folder}' lacks {name}; pass the 'lora' folder of a run trained with lora_rank > 0")
    meta = json.loads((folder / ADAPTER_CONFIG).read_text())
    add_lora(unet, meta["rank"], meta["alpha"], meta["target_modules"])
    result = peft.set_peft_model_state_dict(unet, load_file(str(folder / ADAPTER_WEIGHTS)))
    if getattr(result, "unexpected_keys", None):
        raise InstructSDError(f"LoRA weights in '{folder}' do not fit this UNet (unexpected: {result.unexpected_keys[:3]})")
    unet.conv_in.load_state_dict(load_file(str(folder / CONV_IN_WEIGHTS)))
    return unet


@torch.no_grad()
def merge_adapter(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A plain UNet (no peft layers) computing W + (α/r)·B·A in every adapted projection."""
    peft = _peft()
    for module in unet.modules():
        if isinstance(module, peft.tuners.tuners_utils.BaseTunerLayer):
            module.merge()
    merged = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}
    plain = UNet2DConditionModel.from_config(unet.config)
    plain.load_state_dict(merged, strict=True)
    return plain.to(next(unet.parameters()).dtype)


def adapter_meta(folder: str | Path) -> dict:
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise InstructSDError(f"'{folder}' has no {ADAPTER_CONFIG}; pass a run folder trained with lora_rank > 0 (or its lora/ folder)")
    return json.loads(path.read_text())


def merge_run(run: str | Path, out: str | Path, base_model: str | None = None, overwrite: bool = False) -> Path:
    """Fold a LoRA run's adapters and conv_in into its base model; write a stock pipeline folder.

    ``run`` is a run folder (its ``lora/`` is used) or the adapter folder itself; the base
    model is the one recorded at training time unless ``base_model`` overrides it.
    """
    from instructsd.models.loading import load_components
    from instructsd.models.surgery import ensure_instruct_unet
    from instructsd.models.saving import base_license, card_metadata, license_note, save_finetuned

    folder = Path(run)
    if (folder / "lora" / ADAPTER_CONFIG).is_file():
        folder = folder / "lora"
    meta = adapter_meta(folder)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InstructSDError(f"'{out}' exists; pass --overwrite or choose another --out")
    base = base_model or meta["base_model"]
    parts = load_components(base)
    unet, _ = ensure_instruct_unet(parts.unet)
    unet = merge_adapter(load_adapter(unet, folder))
    save_finetuned(out, base, unet, parts.vae, parts.text_encoder, parts.tokenizer,
                   drop_safety_checker=meta.get("drop_safety_checker", False), prediction_type=meta.get("prediction_type"))
    license = base_license(base)
    (out / "README.md").write_text(
        card_metadata(base, [meta["dataset"]] if meta.get("dataset") else [], license, lora=True) +
        f"# InstructPix2Pix model (instructsd, merged LoRA)\n\n- base model: `{base}`\n{license_note(license)}"
        f"- LoRA rank {meta['rank']}, alpha {meta['alpha']}, on {', '.join(meta['target_modules'])}; conv_in trained fully\n"
        f"- adapters: `{folder}`\n\nLoads in `StableDiffusionInstructPix2PixPipeline.from_pretrained`.\n")
    return out
