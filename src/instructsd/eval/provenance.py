"""What a report needs to be reproduced: package versions, machine, and sha256 of every model file.

Hashes cover the weight files (``*.safetensors``, ``*.bin``, ``*.ckpt``, ``*.pt``) of a local
model folder, or of a hub model's files already in the local cache; nothing is downloaded to
hash it. A model we cannot find locally is recorded as such, not skipped silently.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("instructsd", "torch", "diffusers", "transformers", "datasets", "accelerate", "safetensors",
            "scikit-image", "numpy", "pillow", "lpips")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_CHUNK = 1 << 20


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package, or "not installed"."""
    out = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, str]:
    import torch

    info = {"platform": platform.platform(), "processor": platform.machine(), "torch_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["cuda"] = f"{torch.version.cuda}; {torch.cuda.get_device_name(0)}"
    return info


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _local_folder(model: str | Path) -> Path | None:
    path = Path(str(model)).expanduser()
    if path.exists():
        return path
    try:  # a hub id already in the cache; never downloads
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception:
        return None


def model_hashes(model: str | Path, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> dict[str, str]:
    """{relative path: sha256} of the weight files of ``model`` (a folder, a file or a cached hub id).

    Returns {"(not hashed)": reason} when the files are not on this machine. ``suffixes``
    picks the files (e.g. (".arrow",) to fingerprint a saved dataset).
    """
    folder = _local_folder(model)
    if folder is None:
        return {"(not hashed)": f"'{model}' is neither a local path nor in the local hub cache"}
    if folder.is_file():
        return {folder.name: sha256_file(folder)}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes)
    if not files:
        return {"(not hashed)": f"no files ending {', '.join(suffixes)} under '{folder}'"}
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}


def training_config(model: str | Path) -> dict | str:
    """The resolved config of the run that trained ``model``, or why there is none.

    ``instructsd train`` writes ``config.yaml`` (headed ``# resolved TrainConfig``) in its
    output_dir, with the model in ``final/`` and checkpoints in ``checkpoints/step-N/``; so the
    folder itself and two levels up are searched. Every compared model gets its own (issue 12:
    "Reproduce" showed one run's config).
    """
    import yaml

    path = Path(str(model)).expanduser()
    if not path.is_dir():
        return "not a local folder (a hub id or a file): no training config recorded"
    for folder in (path, path.parent, path.parent.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file() and candidate.read_text().startswith("# resolved TrainConfig"):
            return {"file": str(candidate), **(yaml.safe_load(candidate.read_text()) or {})}
    return f"no config.yaml of an instructsd training run in or above '{path}'"


def provenance(models: dict[str, str | Path] | None = None, dataset: str | Path | None = None) -> dict:
    """Versions, machine, per-model weight hashes and training configs, and the dataset's file hashes,
    for metrics.json and the report."""
    out = {
        "packages": package_versions(),
        "machine": machine(),
        "models": {name: {"source": str(src), "sha256": model_hashes(src), "training_config": training_config(src)}
                   for name, src in (models or {}).items()},
    }
    if dataset is not None:
        out["dataset"] = {"source": str(dataset), "sha256": model_hashes(dataset, (".arrow",))}
    return out
