"""Teachers: image -> image functions whose output becomes the edited image.

Distilling a tool's skill into the model is how the post made its cartoonization dataset
(White-box CartoonGAN as teacher). A teacher here is any of

- ``cartoonizer``: the shipped classical cartoonizer (:func:`instructsd.data.tasks.cartoon_filter`);
- ``"package.module:function"``: a Python function ``f(rgb: uint8 HxWx3 ndarray) -> ndarray | PIL``;
- ``{diffusers: FOLDER, prompt: ..., steps: 20, ...}``: a diffusers image-to-image pipeline
  (``StableDiffusionImg2ImgPipeline``, ``StableDiffusionInstructPix2PixPipeline``, ...) saved
  in FOLDER, called as ``pipe(prompt=prompt, image=photo, num_inference_steps=steps,
  generator=<per-sample seed>, **kwargs)``;
- ``{onnx: FILE}``: an ONNX model taking float32 ``1 x 3 x H x W`` RGB in [0, 1] and returning
  the same layout (needs ``onnxruntime``: ``pip install onnxruntime``).

Every teacher is called as ``teacher(clean, rng) -> uint8 HxWx3``; the heavy ones are loaded
once per worker process, on first use.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from instructsd.errors import InstructSDError

TeacherFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _as_rgb_array(out, shape: tuple[int, ...], who: str) -> np.ndarray:
    if isinstance(out, Image.Image):
        out = np.asarray(out.convert("RGB"))
    out = np.asarray(out)
    if out.dtype != np.uint8:
        if np.issubdtype(out.dtype, np.floating) and out.size and out.max() <= 1.0:
            out = out * 255.0  # a [0, 1] float image
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if out.ndim != 3 or out.shape[2] != 3:
        raise InstructSDError(f"teacher {who} returned shape {out.shape}; expected H x W x 3 RGB")
    if out.shape[:2] != shape[:2]:
        out = np.asarray(Image.fromarray(out).resize((shape[1], shape[0]), Image.Resampling.LANCZOS))
    return out


def _cartoonizer(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from instructsd.data.tasks import cartoon_filter

    return cartoon_filter(clean)


def _import_function(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise InstructSDError(
            f"cannot import teacher {ref!r} ({err}); give it as 'package.module:function' "
            "importable from the current environment"
        ) from err
    if not callable(fn):
        raise InstructSDError(f"teacher {ref!r} is not callable")
    return fn


@functools.cache
def _diffusers_pipeline(folder: str):
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def _onnx_session(path: str):
    try:
        import onnxruntime
    except ImportError as err:
        raise InstructSDError(
            "ONNX teachers need onnxruntime: pip install onnxruntime (or onnxruntime-gpu)"
        ) from err
    return onnxruntime.InferenceSession(path, providers=onnxruntime.get_available_providers())


def check_teacher(spec) -> str:
    """Validate a teacher spec before any work; returns a one-line description."""
    if spec == "cartoonizer":
        return "cartoonizer (shipped classical filter)"
    if isinstance(spec, str) and ":" in spec:
        _import_function(spec)
        return f"function {spec}"
    if isinstance(spec, Mapping) and "diffusers" in spec:
        folder = Path(spec["diffusers"])
        if not (folder / "model_index.json").is_file():
            raise InstructSDError(f"teacher folder '{folder}' has no model_index.json; "
                                  "give a diffusers pipeline folder (save_pretrained)")
        unknown = set(spec) - {"diffusers", "prompt", "steps", "kwargs"}
        if unknown:
            raise InstructSDError(f"diffusers teacher: unknown key(s) {sorted(unknown)}; "
                                  "allowed: diffusers, prompt, steps, kwargs")
        return f"diffusers pipeline {folder} (prompt {spec.get('prompt', '')!r})"
    if isinstance(spec, Mapping) and "onnx" in spec:
        path = Path(spec["onnx"])
        if not path.is_file():
            raise InstructSDError(f"ONNX teacher '{path}' does not exist")
        try:
            importlib.import_module("onnxruntime")
        except ImportError:
            raise InstructSDError("ONNX teachers need onnxruntime: pip install onnxruntime") from None
        return f"ONNX model {path}"
    raise InstructSDError(
        f"unknown teacher {spec!r}; use 'cartoonizer', 'package.module:function', "
        "{diffusers: FOLDER, prompt: ...} or {onnx: FILE}"
    )


def load_teacher(spec) -> TeacherFn:
    """The teacher described by ``spec`` (see the module docstring) as ``f(clean, rng)``."""
    check_teacher(spec)
    if spec == "cartoonizer":
        return _cartoonizer
    if isinstance(spec, str):
        fn = _import_function(spec)
        return lambda clean, rng: _as_rgb_array(fn(clean), clean.shape, spec)
    if "diffusers" in spec:
        folder, prompt = str(spec["diffusers"]), spec.get("prompt", "")
        steps, kwargs = int(spec.get("steps", 20)), dict(spec.get("kwargs") or {})

        def diffusers_teacher(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            import torch

            pipe = _diffusers_pipeline(folder)
            generator = torch.Generator("cpu").manual_seed(int(rng.integers(2**63)))
            out = pipe(prompt=prompt, image=Image.fromarray(clean), num_inference_steps=steps,
                       generator=generator, **kwargs).images[0]
            return _as_rgb_array(out, clean.shape, folder)

        return diffusers_teacher
    path = str(spec["onnx"])

    def onnx_teacher(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        session = _onnx_session(path)
        x = (clean.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        y = session.run(None, {session.get_inputs()[0].name: x})[0][0]
        return _as_rgb_array(np.clip(y.transpose(1, 2, 0), 0, 1) * 255.0, clean.shape, path)

    return onnx_teacher
