"""Load the parts of a Stable Diffusion (1.x/2.x or XL) / InstructPix2Pix checkpoint, one by one.

``from_pretrained`` accepts a hub id or a local diffusers folder. For a local folder we check
up front that every component is there, so a half-copied checkpoint fails with a message
naming the missing folder instead of a deep stack trace. ``instructsd/tiny-base`` names the
tiny instruction-following base that ships inside the package (made by `model pretrain-tiny`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from huggingface_hub import hf_hub_download
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from instructsd.errors import InstructSDError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_COMPONENTS = ("text_encoder_2", "tokenizer_2")  # SDXL's second text encoder (OpenCLIP bigG) and its tokenizer

TINY_BASE_DIR = Path(__file__).parent / "tiny_base"
TINY_BASE_ALIAS = "instructsd/tiny-base"
"""Name that resolves to the shipped base wherever a model is accepted (``base_model=instructsd/tiny-base``)."""


@dataclass
class Components:
    """The five parts training and editing need, wired explicitly (seven for SDXL)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL only
    tokenizer_2: CLIPTokenizer | None = None  # SDXL only
    force_zeros_for_empty_prompt: bool = True  # SDXL's model_index.json: the empty prompt is encoded as zeros

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def text_encoders(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2", "safety_checker")
_CONVERT = ("convert it once with diffusers: `StableDiffusionPipeline.from_single_file(FILE).save_pretrained(OUT)` "
            "(or diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py), then pass OUT")


def is_sdxl_index(index: dict) -> bool:
    """An SDXL pipeline (base or InstructPix2Pix) by its model_index.json: it names a second text encoder."""
    return "text_encoder_2" in index


def check_supported(index: dict, where: str, present: set[str] = frozenset()) -> None:
    """Refuse architectures instructsd cannot train or edit, from a model_index.json (issue 11, item 10)."""
    name = str(index.get("_class_name", ""))
    if "unet" not in index and "transformer" in index:
        raise InstructSDError(f"'{where}' is a {name or 'transformer-based'} model; instructsd trains and edits UNet "
                              "Stable Diffusion models only (1.x/2.x and XL)")
    first = index.get("text_encoder")
    if is_sdxl_index(index) and not (isinstance(first, list) and first and first[0]):
        raise InstructSDError(f"'{where}' is an SDXL refiner ({name or 'one text encoder'}); instructsd trains from SDXL "
                              "base or an SDXL InstructPix2Pix model (two text encoders)")


def _describe_non_diffusers(path: Path) -> str:
    """What a path that is not a diffusers pipeline folder is, and how to convert it."""
    if path.is_file():
        if path.suffix in SINGLE_FILE_SUFFIXES:
            return f"'{path}' is a single-file checkpoint, not a diffusers folder; {_CONVERT.replace('FILE', repr(str(path)))}"
        return f"'{path}' is a file, not a diffusers model folder (a folder with model_index.json)"
    singles = sorted(p.name for p in path.iterdir() if p.suffix in SINGLE_FILE_SUFFIXES)
    if singles:
        return (f"'{path}' holds single-file checkpoint(s) ({', '.join(singles[:3])}) but no model_index.json, so it is "
                f"not a diffusers folder; {_CONVERT.replace('FILE', repr(str(path / singles[0])))}")
    if (path / "config.json").is_file():
        return (f"'{path}' holds one component (config.json) but no model_index.json; pass the pipeline folder "
                "above it (the one with model_index.json, unet/, vae/, …)")
    return f"'{path}' is not a diffusers model folder: model_index.json is missing"


def check_model_folder(path: str | Path) -> None:
    """Raise one clear line if a local path is not a diffusers Stable Diffusion folder
    instructsd can load safely: missing, single-file, SDXL, a missing component, pickled weights."""
    path = Path(path)
    if not path.exists():
        raise InstructSDError(
            f"model folder '{path}' does not exist; pass a diffusers folder or a hub id "
            f"(make a tiny one with `instructsd model init-tiny {path}`)"
        )
    if path.is_file() or not (path / "model_index.json").is_file():
        raise InstructSDError(_describe_non_diffusers(path))
    try:
        index = json.loads((path / "model_index.json").read_text())
    except json.JSONDecodeError as err:
        raise InstructSDError(f"'{path / 'model_index.json'}' is not valid JSON ({err}); re-copy the checkpoint") from err
    check_supported(index, str(path), {p.name for p in path.iterdir() if p.is_dir()})
    for name in COMPONENTS + (SDXL_COMPONENTS if is_sdxl_index(index) else ()):
        sub = path / name
        if not sub.is_dir() or not any(sub.iterdir()):
            raise InstructSDError(
                f"model folder '{path}' is missing its '{name}' component ({sub}); re-copy or re-export the checkpoint"
            )
    for name in WEIGHTED:
        sub = path / name
        if sub.is_dir() and any(sub.glob("*.bin")) and not any(sub.glob("*.safetensors")):
            # Loading a pickle runs whatever code it holds; only safetensors files are read here.
            raise InstructSDError(
                f"'{sub}' has only pickled .bin weights, which can run code when loaded; if you trust them, convert once "
                f"with `DiffusionPipeline.from_pretrained('{path}').save_pretrained(OUT, safe_serialization=True)` and pass OUT")


# ----------------------------------------------------------------------------
# The shipped tiny base, and single files of a model folder or hub id


def tiny_base_path() -> Path:
    """Folder of the shipped base (a stock diffusers InstructPix2Pix folder)."""
    if not (TINY_BASE_DIR / "model_index.json").is_file():
        raise InstructSDError(
            f"the shipped tiny base is missing from {TINY_BASE_DIR}; reinstall instructsd, or make one with "
            "`instructsd model pretrain-tiny runs/pretrain` and copy runs/pretrain/model there"
        )
    return TINY_BASE_DIR


def tiny_base_record(path: Path | None = None) -> dict:
    """The base's pretrain.json: the recipe, its inference settings and its recorded metrics."""
    path = path or tiny_base_path()
    return json.loads((path / "pretrain.json").read_text())


def resolve_model(model: str | Path) -> str | Path:
    """Map the alias of the shipped base to its folder; anything else is returned unchanged."""
    return tiny_base_path() if str(model) == TINY_BASE_ALIAS else model


def base_file(model: str | Path, filename: str, revision: str | None = None) -> Path | None:
    """A file of the base model: from its folder, or from the hub cache for a hub id; None if absent."""
    model = resolve_model(model)
    if is_local(model):
        path = Path(model) / filename
        return path if path.is_file() else None
    try:
        return Path(hf_hub_download(str(model), filename, revision=revision))
    except Exception:  # noqa: BLE001 - absent file, offline without a cached copy: the caller falls back
        return None


def check_hub_model(model: str, revision: str | None = None) -> None:
    """For a hub id, refuse unsupported architectures from its cached model_index.json (if any)."""
    index = base_file(model, "model_index.json", revision)
    if index is not None:
        check_supported(json.loads(index.read_text()), model)


def check_model(model: str | Path, revision: str | None = None) -> None:
    """The up-front check every loader runs: a local folder's layout, or a hub id's model index."""
    if is_local(model):
        check_model_folder(model)
    else:
        check_hub_model(str(model), revision)


def is_local(model: str | Path) -> bool:
    """True for anything that looks like a path rather than an ``org/name`` hub id."""
    text = str(model)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") != 1


def model_index_of(model: str | Path, revision: str | None = None) -> dict:
    """The model's model_index.json ({} for a hub id not in the local cache)."""
    path = base_file(model, "model_index.json", revision)
    return json.loads(path.read_text()) if path is not None else {}


def load_components(model: str | Path, revision: str | None = None) -> Components:
    """Load unet, vae, text encoder(s), tokenizer(s) and a DDPM training scheduler from ``model``
    (``instructsd/tiny-base``: the base that ships with the package); SDXL's second encoder when it has one."""
    model = resolve_model(model)
    check_model(model, revision)
    index = model_index_of(model, revision)
    # Only safetensors are read, never pickles (a hub repository with .bin weights only fails here).
    # The weights come in fp32 whatever a config's torch_dtype says: training keeps fp32 masters and
    # casts the frozen parts itself.
    kw = {"revision": revision} if revision else {}
    safe = {**kw, "use_safetensors": True}
    text = {**safe, "dtype": torch.float32}
    try:
        parts = Components(
            unet=UNet2DConditionModel.from_pretrained(model, subfolder="unet", **safe),
            vae=AutoencoderKL.from_pretrained(model, subfolder="vae", **safe),
            text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **text),
            tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw),
            scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler", **kw),
        )
        if is_sdxl_index(index):
            parts.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2", **text)
            parts.tokenizer_2 = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", **kw)
            parts.force_zeros_for_empty_prompt = bool(index.get("force_zeros_for_empty_prompt", True))
        return parts
    except OSError as err:  # hub id not found, offline, or a corrupt file
        raise InstructSDError(f"cannot load model '{model}': {str(err).splitlines()[0]}") from err


def torch_dtype(name: str) -> torch.dtype:
    """Map 'fp32' / 'fp16' / 'bf16' (or torch names) to a dtype, with a clear error."""
    table = {"fp32": torch.float32, "float32": torch.float32, "no": torch.float32,
             "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise InstructSDError(f"unknown dtype '{name}'; use one of fp32, fp16, bf16")
    return table[name]
