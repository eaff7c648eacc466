"""Save a fine-tuned model as its base with new weights (issue 11, item 3).

A fine-tuned ``final/`` keeps what the base shipped besides the weights: its sampler (class and
``scheduler_config.json`` byte for byte), its safety checker and feature extractor (dropped only
on request), and the license its card declares. Only the UNet changes (conv_in expanded to 8
channels for 4-channel starts), so the result is always a stock InstructPix2Pix pipeline: for an
SDXL base (or SDXL InstructPix2Pix model) a ``StableDiffusionXLInstructPix2PixPipeline`` folder with
both text encoders and the base's ``force_zeros_for_empty_prompt`` (issue 14).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline

from instructsd.errors import InstructSDError
from instructsd.files import atomic_dir
from instructsd.models.loading import base_file, resolve_model
from instructsd.models.tokenizer import write_vocab_files

PIPELINE_FILES = ("model_index.json", "scheduler/scheduler_config.json")
CARD_TAGS = ["instructsd", "instruct-pix2pix", "image-to-image", "stable-diffusion"]


def base_license(model: str | Path) -> str | None:
    """The ``license`` of the base's model card front matter, if it has one."""
    readme = base_file(model, "README.md")
    if readme is None:
        return None
    text = readme.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def card_metadata(base_model: str, datasets: list[str], license: str | None, lora: bool = False) -> str:
    """YAML front matter of a fine-tuned model's card (hub model-card metadata keys)."""
    meta = {
        "base_model": str(base_model), "datasets": [str(d) for d in datasets], "license": license or "other",
        "library_name": "diffusers", "pipeline_tag": "image-to-image", "tags": CARD_TAGS + (["lora"] if lora else []),
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def license_note(license: str | None) -> str:
    """A line for the card body when the base's license could not be read."""
    return "" if license else ("- license: the base model's card declares none that could be read, so the metadata says "
                               "`other`; the base's own terms apply — check them before sharing\n")


def _index_entry(index: dict, name: str) -> list | None:
    entry = index.get(name)
    return entry if isinstance(entry, list) and len(entry) == 2 and entry[0] else None


def save_finetuned(out: str | Path, base_model: str | Path, unet, vae, text_encoder, tokenizer,
                   drop_safety_checker: bool = False, prediction_type: str | None = None,
                   revision: str | None = None, text_encoder_2=None, tokenizer_2=None) -> Path:
    """Write ``out`` as ``base_model`` with the given (fine-tuned) components, atomically.

    The sampler is the base's own: its ``scheduler_config.json`` is copied as is, except that a
    ``prediction_type`` the run trained with replaces the base's (else sampling would be wrong).
    The base's safety checker and feature extractor are kept unless ``drop_safety_checker``.
    ``text_encoder_2`` and ``tokenizer_2`` (SDXL) make it an SDXL InstructPix2Pix folder.
    """
    from diffusers import SchedulerMixin
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    base_model = resolve_model(base_model)
    index_path, scheduler_path = (base_file(base_model, f, revision) for f in PIPELINE_FILES)
    if index_path is None or scheduler_path is None:
        raise InstructSDError(f"cannot read model_index.json and scheduler/scheduler_config.json of '{base_model}'; "
                              "pass a diffusers folder (or a hub id in the local cache)")
    index = json.loads(index_path.read_text())
    scheduler_text = scheduler_path.read_text()
    scheduler_cfg = json.loads(scheduler_text)
    if prediction_type and scheduler_cfg.get("prediction_type", "epsilon") != prediction_type:
        scheduler_cfg["prediction_type"] = prediction_type
        scheduler_text = json.dumps(scheduler_cfg, indent=2) + "\n"
    import diffusers

    scheduler_cls = getattr(diffusers, scheduler_cfg.get("_class_name", ""), None)
    if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, SchedulerMixin)):
        raise InstructSDError(f"'{base_model}' names an unknown scheduler class {scheduler_cfg.get('_class_name')!r} "
                              "in scheduler/scheduler_config.json")
    scheduler = scheduler_cls.from_config(scheduler_cfg)

    keep = not drop_safety_checker and _index_entry(index, "safety_checker") and _index_entry(index, "feature_extractor")
    kw = {"revision": revision} if revision else {}
    safety_checker = feature_extractor = None
    if keep:
        safety_checker = StableDiffusionSafetyChecker.from_pretrained(base_model, subfolder="safety_checker", **kw)
        feature_extractor = CLIPImageProcessor.from_pretrained(base_model, subfolder="feature_extractor", **kw)
    if text_encoder_2 is not None:  # SDXL ships neither safety checker nor feature extractor
        pipe = StableDiffusionXLInstructPix2PixPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
            unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True))
    else:
        pipe = StableDiffusionInstructPix2PixPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=safety_checker, feature_extractor=feature_extractor,
            requires_safety_checker=bool(keep) and index.get("requires_safety_checker", True),
        )
    with atomic_dir(out, overwrite=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_vocab_files(tokenizer, tmp / "tokenizer")
        if tokenizer_2 is not None:
            write_vocab_files(tokenizer_2, tmp / "tokenizer_2")
        (tmp / "scheduler" / "scheduler_config.json").write_text(scheduler_text)
        saved = json.loads((tmp / "model_index.json").read_text())
        for name in ("scheduler", "safety_checker", "feature_extractor"):
            # Name the classes as the base does (e.g. CLIPImageProcessor, not the backend class
            # transformers picked for it on this machine).
            if saved.get(name, [None])[0] is not None and _index_entry(index, name):
                saved[name] = index[name]
        (tmp / "model_index.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return Path(out)
