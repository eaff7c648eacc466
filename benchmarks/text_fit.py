"""Does fitting the tiny text encoder help the UNet tell instructions apart? (benchmarks/RESULTS.md, "Text encoder fit")

    python benchmarks/text_fit.py separation MODEL DATA [STEPS]
    python benchmarks/text_fit.py unet WORK OUT [LR] [STEPS]

``separation``: MODEL's text encoder (a random one: a pretrain-tiny run's ``work/init`` built with
``text_fit_steps=0``) before and after ``fit_text_encoder`` on DATA's training wordings (DATA: the run's
``work/data``). Scored on 1,500 training rows re-worded from the *held-out* instruction banks: each
wording goes to the nearest class centroid of the training wordings' 77 x d outputs (cosine), and the
accuracy is printed for the edit (task and amount) and the task alone.

``unet``: trains the UNet of ``WORK/init`` (a pretrain-tiny run's work folder) on ``WORK/data`` for STEPS
(400) at a constant learning rate LR (1e-4, after 100 warm-up steps), validating on 4 held-out crops per
task every 200 steps (``OUT/validation.jsonl``). Run it on two work folders that differ only in
``text_fit_steps`` to compare.
"""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from instructsd.data.load import load_split
from instructsd.data.tasks import edit_class, row_instruction
from instructsd.models.text_fit import fit_text_encoder


def states(encoder, tokenizer, prompts) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        flat = torch.cat([encoder(input_ids=chunk).last_hidden_state.flatten(1) for chunk in ids.split(256)])
    return torch.nn.functional.normalize(flat, dim=1)


def centroid_accuracy(encoder, tokenizer, train, test) -> tuple[float, float]:
    (prompts, labels), (test_prompts, test_labels) = train, test
    seen, unseen = states(encoder, tokenizer, prompts), states(encoder, tokenizer, test_prompts)
    classes = sorted(set(labels))
    centroids = torch.stack([seen[[i for i, label in enumerate(labels) if label == c]].mean(0) for c in classes])
    predicted = [classes[i] for i in (unseen @ centroids.T).argmax(1).tolist()]
    edit = np.mean([p == t for p, t in zip(predicted, test_labels)])
    task = np.mean([p.split("|")[0] == t.split("|")[0] for p, t in zip(predicted, test_labels)])
    return float(edit), float(task)


def separation(model: str, data: str, steps: int) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    rows = load_split(data, "train", ["edit_prompt", "task", "edit_params"])
    labels = [edit_class(t, p) for t, p in zip(rows["task"], rows["edit_params"])]
    rng = np.random.default_rng(1)
    pick = rng.choice(len(labels), size=min(1500, len(labels)), replace=False)
    held_out = ([row_instruction(rows["task"][i], rows["edit_params"][i], rng, held_out=True) for i in pick],
                [labels[i] for i in pick])
    train = (list(rows["edit_prompt"]), labels)
    print(f"{len(set(labels))} edits; held-out wordings, nearest centroid (edit, task):")
    print("  random encoder  %.3f  %.3f" % centroid_accuracy(encoder, tokenizer, train, held_out))
    stats = fit_text_encoder(encoder, tokenizer, *train, steps=steps, progress=False)
    print(f"  fitted {steps} steps  %.3f  %.3f   ({stats})" % centroid_accuracy(encoder, tokenizer, train, held_out))


def unet(work: str, out: str, lr: float, steps: int) -> None:
    from instructsd.config import load_config
    from instructsd.edit.editor import EditSettings
    from instructsd.recipes.pretrain_tiny import PretrainConfig, train_config, validation_changes
    from instructsd.train.loop import train

    cfg = load_config(PretrainConfig, None, [f"train_steps={steps}"])
    folder, out = Path(work), Path(out)
    tcfg = train_config(cfg, folder / "init", folder / "data", out, checkpoint_every=0, resume="", overwrite=True,
                        validation_every=200, num_validation_images=4, report_to="none",
                        **validation_changes(EditSettings(**cfg.settings[0])))
    train(replace(tcfg, learning_rate=lr, lr_scheduler="constant_with_warmup", cache_dir=str(out) + "-cache"), progress=False)
    print(f"validation curve: {out / 'validation.jsonl'}")


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "separation":
        separation(args[0], args[1], int(args[2]) if len(args) > 2 else 300)
    elif mode == "unet":
        unet(args[0], args[1], float(args[2]) if len(args) > 2 else 1e-4, int(args[3]) if len(args) > 3 else 400)
    else:
        sys.exit(__doc__)
