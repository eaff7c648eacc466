"""The published metrics of two instruction-editing benchmarks, with pinned definitions.

MagicBrush (Zhang et al. 2023, "MagicBrush: A Manually Annotated Dataset for Instruction-Guided
Image Editing", sec. 4 and its released evaluation script) scores each output against the
turn's ground-truth target image:

- l1      mean |output - target| over RGB values scaled to [0, 1]            (lower is better)
- l2      mean (output - target)^2 over RGB values scaled to [0, 1] (an MSE)  (lower is better)
- clip_i  cos(E_I(output), E_I(target))
- dino    cos(DINO(output), DINO(target))
- clip_t  cos(E_I(output), E_T(the target's local caption))

Emu Edit (Sheynin et al. 2023, "Emu Edit: Precise Image Editing via Recognition and Generation
Tasks", sec. 5) has no target images; it scores each output against its input and captions:

- clip_dir  cos(E_I(output) - E_I(input), E_T(output caption) - E_T(input caption)); an output
            identical in CLIP space to its input (||dE_I|| < 1e-6) has no direction and scores 0
- clip_img  cos(E_I(output), E_I(input))
- clip_out  cos(E_I(output), E_T(output caption))
- l1        mean |output - input| over RGB values scaled to [0, 1]
- dino      cos(DINO(output), DINO(input))

The pinned details, the same for both benchmarks:

- Resize rule (l1, l2): the output is resized to the reference image's own size (the target for
  MagicBrush, the original input for Emu Edit) with PIL bicubic, as MagicBrush's script does;
  nothing is resized when the sizes agree. The reference is never resampled.
- E_I / E_T: CLIP's projected embeddings (``get_image_features`` / ``get_text_features``),
  L2-normalised, one image per forward pass (instructsd.eval.suite.ClipEmbedder), preprocessed
  by the checkpoint's own image processor (for OpenAI CLIP: shorter side to 224 bicubic, centre
  crop 224, CLIP mean/std -- the transform of OpenAI's ``clip.load``).
- DINO: the CLS token of the last (layer-normed) hidden state (instructsd.eval.suite.DinoEmbedder).
  Each image is first brought to MagicBrush's DINO view -- shorter side to round(S * 256/224)
  bicubic, centre crop S x S, where S is the checkpoint processor's input side (224 for
  facebook/dino-vits16) -- then the processor normalises it (ImageNet mean/std).
- Default checkpoints: MagicBrush's own (CLIP ViT-B/32, DINO ViT-S/16). For Emu Edit, CLIP
  ViT-L/14 (InstructPix2Pix's CLIP for the direction and image metrics) and DINO ViT-S/16.
  Numbers are comparable with another implementation only when the checkpoint and the
  preprocessing in ``metrics.json``'s fingerprints match; that is why they are recorded.

A checkpoint that cannot be loaded (offline, not cached, no such folder) skips its metrics with
a note; the pixel metrics always run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from instructsd.errors import InstructSDError
from instructsd.eval.metrics import l1, l2
from instructsd.eval.provenance import WEIGHT_SUFFIXES, model_hashes
from instructsd.eval.suite import ClipEmbedder, DinoEmbedder, disabled

MAGICBRUSH = "magicbrush"
EMU_EDIT = "emu-edit"
METRICS = {
    MAGICBRUSH: ("l1", "l2", "clip_i", "dino", "clip_t"),
    EMU_EDIT: ("clip_dir", "clip_img", "clip_out", "l1", "dino"),
}
CLIP_METRICS = {MAGICBRUSH: ("clip_i", "clip_t"), EMU_EDIT: ("clip_dir", "clip_img", "clip_out")}
LOWER_IS_BETTER = frozenset({"l1", "l2"})
DEFAULT_CLIP = {MAGICBRUSH: "openai/clip-vit-base-patch32", EMU_EDIT: "openai/clip-vit-large-patch14"}
DEFAULT_DINO = {MAGICBRUSH: "facebook/dino-vits16", EMU_EDIT: "facebook/dino-vits16"}

PIXEL_RESAMPLE = Image.Resampling.BICUBIC
DINO_RESIZE_RATIO = 256 / 224  # MagicBrush's DINO view: Resize(256) then CenterCrop(224)
_NO_DIRECTION = 1e-6
# Files whose bytes decide what a metric network computes: weights, configs, tokenizer vocab.
_FINGERPRINT_SUFFIXES = (*WEIGHT_SUFFIXES, ".json", ".txt", ".model")
_PROCESSOR_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                   "do_normalize", "image_mean", "image_std", "do_convert_rgb")


# ----------------------------------------------------------------------------
# Pure pieces


def at_reference_size(output: Image.Image, reference: Image.Image) -> Image.Image:
    """``output`` as RGB at ``reference``'s size (PIL bicubic), untouched when the sizes agree."""
    output = output.convert("RGB")
    return output if output.size == reference.size else output.resize(reference.size, PIXEL_RESAMPLE)


def pixel_distances(output: Image.Image, reference: Image.Image) -> dict[str, float]:
    """MagicBrush's L1 and L2 of ``output`` against ``reference``, at the reference's size."""
    out = at_reference_size(output, reference)
    ref = reference.convert("RGB")
    return {"l1": l1(out, ref), "l2": l2(out, ref)}


def dino_view(image: Image.Image, side: int) -> Image.Image:
    """MagicBrush's DINO transform before normalising: shorter side to round(side * 256/224)
    (bicubic), then the centre ``side`` x ``side`` crop."""
    image = image.convert("RGB")
    w, h = image.size
    short = round(side * DINO_RESIZE_RATIO)
    scale = short / min(w, h)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return image.crop((left, top, left + side, top + side))


def _processor_side(processor) -> int:
    """The square side a ViT image processor feeds its model."""
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        return int(processor.crop_size["height"])
    size = processor.size
    return int(size.get("height") or size.get("shortest_edge"))


def fingerprint(source: str, processor, extra: dict | None = None) -> dict:
    """Which checkpoint a metric used and how it saw images: path, sha256 of its files, input side,
    the processor's settings, and any step of ours before the processor."""
    files = model_hashes(source, _FINGERPRINT_SUFFIXES)
    digest = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    settings = processor.to_dict()
    return {"model": source, "sha256": digest if "(not hashed)" not in files else files["(not hashed)"],
            "files": files, "input_side": _processor_side(processor),
            "processor": {k: settings[k] for k in _PROCESSOR_KEYS if k in settings}, **(extra or {})}


# ----------------------------------------------------------------------------
# The scorer


@dataclass
class BenchScorer:
    """One benchmark's metrics; ``notes`` says which were skipped and why, ``fingerprints`` how each ran."""

    benchmark: str
    clip: ClipEmbedder | None = None
    dino: DinoEmbedder | None = None
    captions: bool = True  # False: MagicBrush rows carry no local caption, so CLIP-T is skipped
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, benchmark: str, clip: str | Path | None, dino: str | Path | None, device: str = "cpu",
             captions: bool = True) -> BenchScorer:
        """Load the CLIP and DINO checkpoints; one that cannot be loaded is skipped with a note."""
        scorer = cls(benchmark, captions=captions)
        for attr, name, loader, flag, metrics in (
            ("clip", clip, ClipEmbedder.load, "--clip", CLIP_METRICS[benchmark]),
            ("dino", dino, DinoEmbedder.load, "--dino", ("dino",)),
        ):
            if disabled(name):
                scorer.notes.append(f"{', '.join(metrics)} skipped: no model given ({flag} none).")
                continue
            try:
                setattr(scorer, attr, loader(name, device=device))
            except Exception as err:  # noqa: BLE001 -- offline, missing folder, not a checkpoint: skip, say so
                first = (str(err).strip().splitlines() or [""])[0][:200]
                scorer.notes.append(f"{', '.join(metrics)} skipped: could not load '{name}' ({type(err).__name__}: "
                                    f"{first}); pass {flag} with a local folder of the checkpoint.")
        if benchmark == MAGICBRUSH and scorer.clip is not None and not captions:
            scorer.notes.append("clip_t skipped: the rows carry no local caption of the target (MagicBrush ships them "
                                "in local_descriptions.json); add a column and pass --caption-column NAME.")
        return scorer

    @property
    def names(self) -> list[str]:
        """The metrics this scorer computes, in the benchmark's published order."""
        have = {"l1", "l2"} | ({"dino"} if self.dino is not None else set())
        if self.clip is not None:
            have |= set(CLIP_METRICS[self.benchmark]) - ({"clip_t"} if not self.captions else set())
        return [m for m in METRICS[self.benchmark] if m in have]

    @property
    def skipped(self) -> list[str]:
        return [m for m in METRICS[self.benchmark] if m not in self.names]

    def fingerprints(self) -> dict[str, dict]:
        """Per computed metric: its definition's pinned settings and its checkpoint's fingerprint."""
        reference = "target_img" if self.benchmark == MAGICBRUSH else "input image"
        pixel = {"reference": reference, "scale": "RGB / 255", "resize": "output to the reference's size, PIL bicubic"}
        out: dict[str, dict] = {m: dict(pixel) for m in ("l1", "l2") if m in self.names}
        if self.clip is not None:
            clip = fingerprint(self.clip.source, self.clip.processor,
                               {"embedding": "get_image_features / get_text_features, L2-normalised"})
            out.update({m: clip for m in self.names if m.startswith("clip")})
        if self.dino is not None:
            side = _processor_side(self.dino.processor)
            out["dino"] = fingerprint(self.dino.source, self.dino.processor, {
                "embedding": "CLS token of last_hidden_state, L2-normalised",
                "view": f"shorter side to {round(side * DINO_RESIZE_RATIO)} bicubic, centre crop {side}"})
        return out

    def _dino(self, image: Image.Image) -> torch.Tensor:
        return self.dino.images([dino_view(image, _processor_side(self.dino.processor))])[0]

    def magicbrush(self, output: Image.Image, target: Image.Image, caption: str | None = None) -> dict[str, float]:
        """MagicBrush's metrics of one output against its turn's target (and the target's local caption)."""
        scores = pixel_distances(output, target)
        if self.clip is not None:
            e_out = self.clip.images([output])[0]
            scores["clip_i"] = float(e_out @ self.clip.images([target])[0])
            if self.captions:
                if not caption:
                    raise InstructSDError("a row has an empty local caption; CLIP-T needs one for every row "
                                          "(fill the caption column, or pass --caption-column none)")
                scores["clip_t"] = float(e_out @ self.clip.texts([caption])[0])
        if self.dino is not None:
            scores["dino"] = float(self._dino(output) @ self._dino(target))
        return {m: scores[m] for m in self.names}

    def emu_edit(self, output: Image.Image, source: Image.Image, input_caption: str,
                 output_caption: str) -> dict[str, float]:
        """Emu Edit's metrics of one output against its input and the two captions."""
        scores = {"l1": pixel_distances(output, source)["l1"]}
        if self.clip is not None:
            e_out, e_in = self.clip.images([output])[0], self.clip.images([source])[0]
            t_in, t_out = self.clip.texts([input_caption, output_caption])
            d_img = e_out - e_in
            scores["clip_dir"] = (0.0 if float(d_img.norm()) < _NO_DIRECTION
                                  else float(torch.nn.functional.cosine_similarity(d_img, t_out - t_in, dim=0)))
            scores["clip_img"] = float(e_out @ e_in)
            scores["clip_out"] = float(e_out @ t_out)
        if self.dino is not None:
            scores["dino"] = float(self._dino(output) @ self._dino(source))
        return {m: scores[m] for m in self.names}
