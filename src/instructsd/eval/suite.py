"""Metrics computed with pretrained networks: CLIP, DINO and LPIPS, and the suite that runs them all.

Each network is loaded from a local folder or a hub id with transformers' stock classes. When
one cannot be loaded (no network, not cached, package missing) its metrics are *skipped*: the
suite records a one-line note saying which metric, why, and what to pass instead, and every
report prints those notes. A metric is never silently left out.

Definitions (docs/evaluation.md has them in full):

- clip_image  cos(E_I(output), E_I(input)) -- InstructPix2Pix's "CLIP image similarity"
              (Brooks et al. 2023, sec. 4.2): how much of the input survives the edit.
- clip_dir    cos(E_I(output) - E_I(input), E_T(output caption) - E_T(input caption)) --
              the "CLIP text-image direction similarity" (Gal et al. 2022, StyleGAN-NADA; used
              by InstructPix2Pix and diffusers' evaluation guide): does the image change the way
              the caption changes. An identity edit has no direction; it scores 0.
- clip_t      cos(E_I(output), E_T(output caption)) -- MagicBrush's CLIP-T.
- clip_i      cos(E_I(output), E_I(ground truth)) -- MagicBrush's CLIP-I.
- dino        cos(DINO CLS(output), DINO CLS(ground truth)) -- MagicBrush's DINO score.
- lpips       LPIPS distance to the ground truth (Zhang et al. 2018), lower is better.
- identity_rate, preservation, edit_strength (and their LPIPS forms with an LPIPS model): the
              output against its input, split by the pair's automatic edit mask
              (``eval.edit_metrics``, issue 16); on by default (``edit=False`` turns them off).

E_I / E_T are CLIP's projected image / text embeddings (`get_image_features` /
`get_text_features`), each L2-normalised before the cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instructsd.eval.edit_metrics import EDIT_LPIPS_METRICS, EDIT_METRICS, edit_mask, edit_scores
from instructsd.eval.metrics import METRICS, PIXEL_METRICS, to_array
from instructsd.eval.rows import Example

# Defaults follow the papers: InstructPix2Pix scores with CLIP ViT-L/14; MagicBrush's DINO
# score uses DINO ViT-S/16. Pass a local folder (or "none") to use another or to skip.
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_DINO = "facebook/dino-vits16"
DEFAULT_LPIPS = "alex"

CLIP_METRICS = ("clip_image", "clip_dir", "clip_t", "clip_i")
# Metrics measured against the ground truth, on which the ground truth itself is trivially perfect.
VS_GROUND_TRUTH = frozenset({*PIXEL_METRICS, "lpips", "clip_i", "dino"})
DINO_METRICS = ("dino",)
LPIPS_METRICS = ("lpips",)

def disabled(name: str | None) -> bool:
    """True for an option that turns a network metric off: None, "", "none", "off" or "skip"."""
    return name is None or str(name).strip().lower() in ("", "none", "off", "skip")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


@torch.no_grad()
def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


# ----------------------------------------------------------------------------
# CLIP


@dataclass
class ClipEmbedder:
    """CLIP image and text embeddings (projected, L2-normalised) from one checkpoint."""

    model: object
    processor: object
    tokenizer: object
    source: str
    device: str = "cpu"

    @classmethod
    def load(cls, name: str | Path, device: str = "cpu") -> ClipEmbedder:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        model = CLIPModel.from_pretrained(str(name)).to(device).eval()
        return cls(model, CLIPImageProcessor.from_pretrained(str(name)), AutoTokenizer.from_pretrained(str(name)),
                   str(name), device)

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels.to(self.device))
        return _normalise(getattr(out, "pooler_output", out)).cpu()

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        max_len = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device))
        return _normalise(getattr(out, "pooler_output", out)).cpu()


# ----------------------------------------------------------------------------
# DINO (v1 ViT or DINOv2: the CLS token of the last, layer-normed hidden state)


@dataclass
class DinoEmbedder:
    model: object
    processor: object
    source: str
    device: str = "cpu"

    @classmethod
    def load(cls, name: str | Path, device: str = "cpu") -> DinoEmbedder:
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(str(name)).to(device).eval()
        return cls(model, AutoImageProcessor.from_pretrained(str(name)), str(name), device)

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        hidden = self.model(pixel_values=pixels.to(self.device)).last_hidden_state
        return _normalise(hidden[:, 0]).cpu()


# ----------------------------------------------------------------------------
# LPIPS: only through the `lpips` package (it needs torchvision and downloads its backbone).


@dataclass
class LpipsScorer:
    model: object
    source: str
    device: str = "cpu"

    @classmethod
    def load(cls, net: str = DEFAULT_LPIPS, device: str = "cpu") -> LpipsScorer:
        try:
            import lpips  # noqa: PLC0415 -- optional: needs torchvision, which instructsd does not require
        except ImportError as err:
            raise ImportError("the `lpips` package is not installed (pip install lpips; it needs torchvision)") from err
        return cls(lpips.LPIPS(net=net, verbose=False).to(device).eval(), f"lpips net={net}", device)

    @torch.no_grad()
    def distance(self, pred: Image.Image, target: Image.Image) -> float:
        def tensor(im: Image.Image) -> torch.Tensor:
            x = torch.from_numpy(to_array(im)).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # LPIPS wants [-1, 1]
            return x.to(self.device)

        return float(self.model(tensor(pred), tensor(target)).item())


# ----------------------------------------------------------------------------
# The suite


@dataclass
class MetricSuite:
    """Every available metric, computed per (output, example); `notes` says what was skipped and why."""

    clip: ClipEmbedder | None = None
    dino: DinoEmbedder | None = None
    lpips: LpipsScorer | None = None
    notes: list[str] = field(default_factory=list)
    pixel: tuple[str, ...] = tuple(PIXEL_METRICS)  # which of PIXEL_METRICS to compute
    edit: bool = True  # the edit-aware metrics of eval.edit_metrics (output vs input, by the edit mask)
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, clip: str | Path | None = DEFAULT_CLIP, dino: str | Path | None = DEFAULT_DINO,
             lpips: str | None = DEFAULT_LPIPS, device: str = "cpu") -> MetricSuite:
        """Load each network; one that fails to load is skipped with a note, never silently."""
        suite = cls()
        for attr, name, loader, metrics, flag in (
            ("clip", clip, ClipEmbedder.load, CLIP_METRICS, "--clip"),
            ("dino", dino, DinoEmbedder.load, DINO_METRICS, "--dino"),
            ("lpips", lpips, LpipsScorer.load, LPIPS_METRICS, "--lpips"),
        ):
            if disabled(name):
                suite.notes.append(f"{', '.join(metrics)} skipped: no model given ({flag} none).")
                continue
            try:
                setattr(suite, attr, loader(name, device=device))
            except Exception as err:  # any loading failure: offline, missing files, missing package
                suite.notes.append(f"{', '.join(metrics)} skipped: could not load '{name}' ({_first_line(err)}); "
                                   f"pass {flag} with a local folder{' or hub id' if attr != 'lpips' else ' after installing lpips'}.")
        return suite

    @classmethod
    def headline(cls) -> MetricSuite:
        """PSNR, SSIM and the edit-aware metrics (no network): `instructsd eval`'s default, in-training
        validation and the tiny base's card."""
        return cls(pixel=tuple(METRICS))

    @property
    def names(self) -> list[str]:
        """Metric keys this suite produces, in report order."""
        out = list(self.pixel) + (list(EDIT_METRICS) if self.edit else [])
        if self.lpips is not None:
            out += LPIPS_METRICS + (EDIT_LPIPS_METRICS if self.edit else ())
        if self.clip is not None:
            out += CLIP_METRICS
        if self.dino is not None:
            out += DINO_METRICS
        return out

    @property
    def sources(self) -> dict[str, str]:
        """Which checkpoint each network came from (for the report's provenance)."""
        return {k: v.source for k, v in (("clip", self.clip), ("dino", self.dino), ("lpips", self.lpips)) if v is not None}

    def _cached(self, key, compute):
        if key is None:
            return compute()
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def score(self, output: Image.Image, example: Example, key: object = None) -> dict[str, float]:
        """All metrics of ``output`` for ``example``; ``key`` caches the example's own embeddings.

        Missing captions are an error when CLIP is loaded: the text metrics need both.
        """
        scores = {name: PIXEL_METRICS[name](output, example.target) for name in self.pixel}
        if self.edit:
            # The mask belongs to the pair, not the output: computed once per example (issue 16).
            mask = self._cached(None if key is None else ("mask", key), lambda: edit_mask(example.source, example.target))
            scores.update(edit_scores(output, example.source, example.target, mask,
                                      None if self.lpips is None else self.lpips.distance))
        if self.lpips is not None:
            scores["lpips"] = self.lpips.distance(output, example.target)
        if self.clip is not None:
            if example.input_caption is None or example.output_caption is None:
                raise ValueError("CLIP direction and CLIP-T need an input and an output caption for every example")
            # One image per forward pass, always: batched and single passes differ in the last bits,
            # which would give an unchanged image a spurious direction.
            src, tgt = self._cached(None if key is None else ("clip-img", key),
                                    lambda: (self.clip.images([example.source])[0], self.clip.images([example.target])[0]))
            t_in, t_out = self._cached(("clip-txt", example.input_caption, example.output_caption),
                                       lambda: self.clip.texts([example.input_caption, example.output_caption]))
            out = self.clip.images([output])[0]
            scores["clip_image"] = float(out @ src)
            d_img, d_txt = out - src, t_out - t_in
            # An unchanged image has no direction: it scores 0 rather than NaN.
            scores["clip_dir"] = (0.0 if float(d_img.norm()) < 1e-6
                                  else float(torch.nn.functional.cosine_similarity(d_img, d_txt, dim=0)))
            scores["clip_t"] = float(out @ t_out)
            scores["clip_i"] = float(out @ tgt)
        if self.dino is not None:
            tgt = self._cached(None if key is None else ("dino", key), lambda: self.dino.images([example.target])[0])
            scores["dino"] = float(self.dino.images([output])[0] @ tgt)
        return scores


def mean_scores(rows: Sequence[dict], keys: Sequence[str]) -> dict[str, float]:
    """Plain means of ``keys`` over ``rows`` (used for sweep points)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in keys if rows and all(k in r for r in rows)}
