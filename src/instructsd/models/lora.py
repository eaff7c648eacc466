"""LoRA (Hu et al. 2021) on the UNet's attention projections, saved so stock diffusers and peft load it.

conv_in is trained fully only where it has to be. A model started from plain Stable Diffusion
has its 4 new input-image channels at zero (``surgery.expand_conv_in``); freezing conv_in there
(as the public LoRA research script does — and then saves a different conv_in than it trained)
leaves the model blind to the input image. An 8-channel InstructPix2Pix base already reads the
image, so there the adapter is pure LoRA and the base's conv_in stays as it is (issue 11, item 6).

An adapter folder (``run/lora/``) holds:

- ``pytorch_lora_weights.safetensors``: diffusers' LoRA format, written by the stock
  ``save_lora_weights`` with the LoraConfig in its header, so ``pipe.load_lora_weights(folder)``
  keeps ``lora_alpha`` (without it diffusers assumes alpha = rank);
- ``adapter_config.json`` + ``adapter_model.safetensors``: a peft adapter, as
  ``PeftModel.save_pretrained`` writes it (``PeftModel.from_pretrained(unet, folder)``);
- ``conv_in.safetensors``: only when conv_in was trained — the expanded 8-channel conv_in, which
  no LoRA loader carries into a 4-channel base (see docs/training.md for how to load it);
- ``instructsd_lora.json``: what instructsd needs to rebuild the model (base, conv_in history).

:func:`merge_adapter` folds the adapters into a plain UNet that stock diffusers loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from instructsd.errors import InstructSDError
from instructsd.files import atomic_dir
from instructsd.models.loading import load_components
from instructsd.models.saving import base_license, card_metadata, license_note, save_finetuned
from instructsd.models.surgery import ensure_instruct_unet

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's names
ADAPTER_CONFIG = "adapter_config.json"
CONV_IN_WEIGHTS = "conv_in.safetensors"
META = "instructsd_lora.json"
PEFT_PREFIX = "base_model.model."  # keys of a PeftModel-wrapped model, as PeftModel.save_pretrained writes them


def _peft():
    try:
        import peft
    except ImportError as err:  # optional extra
        raise InstructSDError("LoRA needs peft: pip install 'instructsd[lora]' (or pip install peft)") from err
    return peft


def lora_config(rank: int, alpha: float | None, targets: list[str], base_model: str | None = None):
    """The peft LoraConfig of a run: B starts at zero, so step 0 computes the base model exactly."""
    return _peft().LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(targets),
                              base_model_name_or_path=base_model)


def trains_conv_in(setting: bool | None, expanded: bool) -> bool:
    """``lora_train_conv_in`` resolved: null trains conv_in only where it was expanded from a 4-channel start."""
    return expanded if setting is None else setting


def add_lora(unet: UNet2DConditionModel, rank: int, alpha: float | None, targets: list[str], *,
             train_conv_in: bool = True) -> UNet2DConditionModel:
    """Freeze the UNet, inject LoRA adapters into ``targets``, and unfreeze conv_in if ``train_conv_in``."""
    if not train_conv_in and unet.config.in_channels > 4 and not unet.conv_in.weight[:, 4:].any():
        raise InstructSDError(
            "conv_in's input-image channels are all zero (conv_in was expanded from a 4-channel model): with "
            "lora_train_conv_in=false the model would never see the input image; set lora_train_conv_in=true or null")
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(rank, alpha, targets))
    unet.conv_in.requires_grad_(train_conv_in)
    return unet


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}


def save_adapter(unet: UNet2DConditionModel, folder: str | Path, *, rank: int, alpha: float | None, targets: list[str],
                 base_model: str, expanded_conv_in: bool, dataset: str = "", prediction_type: str | None = None,
                 drop_safety_checker: bool = False) -> Path:
    """Write the adapter folder atomically (temp folder, then rename); conv_in is saved when it was trained.

    ``dataset``, ``prediction_type`` and ``drop_safety_checker`` are recorded so ``merge_run`` saves the
    same pipeline and card as the run's ``final/``."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    peft = _peft()
    folder = Path(folder)
    adapters = _cpu(peft.get_peft_model_state_dict(unet))
    config = lora_config(rank, alpha, targets, base_model)
    train_conv_in = unet.conv_in.weight.requires_grad  # as add_lora left it for the run

    with atomic_dir(folder, overwrite=True) as tmp:
        # diffusers: its own writer, with the LoraConfig in the file header (diffusers >= 0.35 reads it back). Only the
        # keys that shape the adapter: diffusers calls LoraConfig(**header), which an older peft refuses on unknown keys.
        header = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
        sdxl = unet.config.get("addition_embed_type") == "text_time"  # the SDXL UNet's pooled-text/size embedding
        writer = StableDiffusionXLInstructPix2PixPipeline if sdxl else StableDiffusionInstructPix2PixPipeline
        writer.save_lora_weights(
            tmp, unet_lora_layers=convert_state_dict_to_diffusers(adapters), unet_lora_adapter_metadata=header)
        # peft: what PeftModel.save_pretrained writes for a wrapped UNet.
        config.save_pretrained(str(tmp))
        save_file({PEFT_PREFIX + k: v for k, v in adapters.items()}, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if train_conv_in:
            save_file(_cpu(unet.conv_in.state_dict()), str(tmp / CONV_IN_WEIGHTS))
        (tmp / META).write_text(json.dumps({
            "base_model": base_model, "expanded_conv_in": expanded_conv_in, "unet_in_channels": unet.config.in_channels,
            "train_conv_in": train_conv_in, "dataset": dataset, "prediction_type": prediction_type,
            "drop_safety_checker": drop_safety_checker,
        }, indent=2))
    return folder


def adapter_meta(folder: str | Path) -> dict:
    """instructsd's record of an adapter folder with the LoRA settings added: base_model, expanded_conv_in,
    unet_in_channels, train_conv_in, rank, alpha, target_modules."""
    folder = Path(folder)
    if (folder / META).is_file():
        meta = json.loads((folder / META).read_text())
        config = json.loads((folder / ADAPTER_CONFIG).read_text()) if (folder / ADAPTER_CONFIG).is_file() else None
        if not config or "r" not in config:
            raise InstructSDError(f"'{folder}' lacks a peft {ADAPTER_CONFIG}; copy the whole lora/ folder of the run")
        return {**meta, "rank": config["r"], "alpha": config["lora_alpha"],
                "target_modules": sorted(config["target_modules"])}
    if (folder / ADAPTER_CONFIG).is_file():
        old = json.loads((folder / ADAPTER_CONFIG).read_text())
        if "rank" in old:  # written before this format: conv_in always trained, one instructsd json
            return {**old, "train_conv_in": True}
        raise InstructSDError(f"'{folder}' is a peft adapter without {META}; pass the lora/ folder of an instructsd run")
    raise InstructSDError(f"'{folder}' has no {META}; pass a run folder trained with lora_rank > 0 (or its lora/ folder)")


def load_adapter(unet: UNet2DConditionModel, folder: str | Path) -> UNet2DConditionModel:
    """Inject the saved adapters (and conv_in, when it was trained) into an 8-channel ``unet`` of the same base."""
    peft = _peft()
    folder = Path(folder)
    meta = adapter_meta(folder)
    needed = [ADAPTER_WEIGHTS] + ([CONV_IN_WEIGHTS] if meta["train_conv_in"] else [])
    for name in needed:
        if not (folder / name).is_file():
            raise InstructSDError(f"LoRA folder '{folder}' lacks {name}; pass the whole 'lora' folder of a run "
                                  f"trained with lora_rank > 0")
    unet.add_adapter(lora_config(meta["rank"], meta["alpha"], meta["target_modules"]))
    # set_peft_model_state_dict maps both PeftModel keys and the unprefixed ones of older folders.
    result = peft.set_peft_model_state_dict(unet, load_file(str(folder / ADAPTER_WEIGHTS)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise InstructSDError(f"LoRA weights in '{folder}' do not fit this UNet (unexpected: {list(result.unexpected_keys)[:3]}, "
                              f"missing: {missing[:3]}); load them onto the run's base model")
    if meta["train_conv_in"]:
        conv = load_file(str(folder / CONV_IN_WEIGHTS))
        if conv["weight"].shape != unet.conv_in.weight.shape:
            raise InstructSDError(f"'{folder / CONV_IN_WEIGHTS}' has shape {tuple(conv['weight'].shape)}, this UNet's "
                                  f"conv_in {tuple(unet.conv_in.weight.shape)}; load the adapter onto the run's base model")
        unet.conv_in.load_state_dict(conv)
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


def merge_run(run: str | Path, out: str | Path, base_model: str | None = None, overwrite: bool = False) -> Path:
    """Fold a LoRA run's adapters (and conv_in, when trained) into its base model; write a stock pipeline folder.

    ``run`` is a run folder (its ``lora/`` is used) or the adapter folder itself; the base
    model is the one recorded at training time unless ``base_model`` overrides it.
    """
    folder = Path(run)
    if (folder / "lora").is_dir():
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
                   drop_safety_checker=meta.get("drop_safety_checker", False), prediction_type=meta.get("prediction_type"),
                   text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2)
    license = base_license(base)
    conv = "conv_in trained fully" if meta["train_conv_in"] else "conv_in of the base"
    (out / "README.md").write_text(
        card_metadata(base, [meta["dataset"]] if meta.get("dataset") else [], license, lora=True) +
        f"# InstructPix2Pix model (instructsd, merged LoRA)\n\n- base model: `{base}`\n{license_note(license)}"
        f"- LoRA rank {meta['rank']}, alpha {meta['alpha']}, on {', '.join(meta['target_modules'])}; {conv}\n"
        f"- adapters: `{folder}`\n\nLoads in `{'StableDiffusionXL' if parts.is_sdxl else 'StableDiffusion'}"
        "InstructPix2PixPipeline.from_pretrained`.\n")
    return out
