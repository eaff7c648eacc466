"""Writing edited images so that how they were made travels with them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, PngImagePlugin


def save_png(image: Image.Image, path: str | Path, meta: dict) -> Path:
    """Save ``image`` as PNG with ``meta`` in its text chunks and a sidecar JSON; atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in meta.items():
        info.add_text(f"instructsd:{key}", json.dumps(value) if not isinstance(value, str) else value)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
    sidecar = path.with_suffix(".json")
    tmp_json = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp_json.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp_json, sidecar)
    return path
