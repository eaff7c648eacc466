"""Fit a tiny random CLIP text encoder to tell instructions apart, before the UNet learns from it.

Stable Diffusion's text encoder is CLIP, trained on 400 M captions and then frozen: similar
instructions already map to similar embeddings and different edits to different ones. A tiny
encoder built from code is random, and its 77-token outputs separate the pre-training tasks
poorly (benchmarks/RESULTS.md, "Text encoder fit"): the UNet then cannot tell the edits apart and
learns their average. A CPU minute of supervised fitting gives it what CLIP's pre-training gives
the real one:

    L = CE(W · EOS(prompt), edit) + CE(W · mean_t h_t(prompt), edit)

where ``edit`` is the instruction's edit class (its task and, for a photo operation, the amount it
states: "one stop brighter" and "two stops darker" are different edits), ``EOS`` the encoder's
pooled output and ``h_t`` its 77 last hidden states, which is what the UNet's cross-attention
reads. The linear head ``W`` is thrown away; the encoder is frozen afterwards as usual. Only
training-split instructions are seen, so held-out paraphrases stay held out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer


def _tokens(tokenizer: CLIPTokenizer, prompts: Sequence[str]) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _logits(text_encoder: CLIPTextModel, head: torch.nn.Linear, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = text_encoder(input_ids=ids)
    return head(out.pooler_output), head(out.last_hidden_state.mean(dim=1))


def fit_text_encoder(
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train ``text_encoder`` in place to classify each prompt's label; returns the final loss and
    the accuracy on the distinct training prompts (pooled and mean-of-states readouts)."""
    if len(prompts) != len(labels) or not prompts:
        raise ValueError("fit_text_encoder needs one label per prompt, and at least one prompt")
    pairs = sorted(set(zip(prompts, labels)))  # each distinct wording once: common ones do not dominate
    classes = sorted({label for _, label in pairs})
    ids = _tokens(tokenizer, [p for p, _ in pairs])
    target = torch.tensor([classes.index(label) for _, label in pairs])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = torch.nn.Linear(text_encoder.config.hidden_size, len(classes))
    text_encoder.train().requires_grad_(True)
    params = [*text_encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="text encoder", disable=not progress, dynamic_ncols=True)
    loss = torch.tensor(0.0)
    for _ in bar:
        pick = torch.from_numpy(rng.integers(0, len(pairs), size=min(batch_size, len(pairs))))
        pooled, mean = _logits(text_encoder, head, ids[pick])
        loss = torch.nn.functional.cross_entropy(pooled, target[pick]) + torch.nn.functional.cross_entropy(mean, target[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    text_encoder.eval().requires_grad_(False)
    with torch.no_grad():
        pooled, mean = zip(*(_logits(text_encoder, head, chunk) for chunk in ids.split(256)))
        pooled_acc = (torch.cat(pooled).argmax(1) == target).float().mean().item()
        mean_acc = (torch.cat(mean).argmax(1) == target).float().mean().item()
    return {"steps": steps, "loss": float(loss.item()), "classes": len(classes), "prompts": len(pairs),
            "accuracy_pooled": pooled_acc, "accuracy_mean": mean_acc}
