"""Run diffusers' ``examples/instruct_pix2pix/train_instruct_pix2pix.py`` command line as an instructsd config.

``instructsd train --from-diffusers-args -- FLAGS`` (issue 11, item 8) reads the reference
script's flags and turns them into :class:`~instructsd.train.config.TrainConfig` keys so the run
means what the script would do: a flag the user leaves out gets the *script's* default wherever
it differs from instructsd's (printed as "(script default)"). Flags with no effect here are
named and ignored; flags that would change the run in a way instructsd cannot reproduce are
refused; a flag the script does not have is an error.

Everything is driven by one table, :data:`FLAGS`, one record per flag of the script (as of
diffusers' main at 0.40.0.dev0: 51 flags); the migration table in docs/training.md is generated from it by
:func:`migration_table_markdown` (``python -m instructsd.train.diffusers_args --update-doc
docs/training.md``), and a test checks the two agree.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from instructsd.errors import InstructSDError
from instructsd.files import atomic_write_text

SCRIPT = "train_instruct_pix2pix.py"
Kind = Literal["str", "int", "float", "switch"]
Status = Literal["mapped", "ignored", "refused"]


class Refused(Exception):
    """A flag whose value instructsd cannot honour; collected and reported together."""


@dataclass(frozen=True)
class Context:
    """What some conversions need beyond the flags: the process count and the dataset's size."""

    num_processes: int = 1
    count_rows: Optional[Callable[[str], int]] = None  # training rows of a dataset, for --num_train_epochs


# A conversion: (the flag's value, every flag's value by dest, context) -> (config values, detail for the printout).
Convert = Callable[[Any, dict, Context], "tuple[dict[str, Any], str]"]


@dataclass(frozen=True)
class Flag:
    """One flag of the script: its type and default there, and what it becomes here."""

    name: str            # "--resolution"
    kind: Kind           # how argparse reads it ("switch" = store_true)
    default: Any         # the script's default
    key: Optional[str]   # the TrainConfig key(s) it sets, for the table; None when ignored or refused
    note: str = ""       # for the docs' table: how it converts, or why it is ignored/refused
    convert: Optional[Convert] = None  # None: the value goes to `key` as is (nothing when None)
    status: Status = "mapped"
    caveat: str = ""     # how the result differs from the script's; printed when the flag is given

    @property
    def dest(self) -> str:
        return self.name[2:]


# --- conversions that are more than a rename -------------------------------------------------


def dropout_probs(p: float) -> tuple[float, float, float]:
    """(text only, image only, both) probabilities of the script's conditioning dropout.

    The script draws one r ~ U[0, 1) per sample, drops the text when r < 2p and the image when
    p <= r < 3p (InstructPix2Pix, Brooks et al. 2023, sec. 3.2.1). So text only is r in [0, p),
    both is [p, 2p), image only is [2p, 3p): p each for p <= 1/3, the intervals clipped at 1 above.
    """
    if not 0 <= p <= 1:
        raise Refused(f"{p!r} is not a probability in [0, 1]")

    def span(lo: float, hi: float) -> float:
        return max(0.0, min(hi, 1.0) - min(lo, 1.0))

    # Rounded to drop float noise (1 - 0.8 = 0.19999999999999996), so for p > 1/3, where the
    # intervals fill [0, 1), the three sum to exactly 1 and pass the config's sum <= 1 check.
    return round(span(0, p), 12), round(span(2 * p, 3 * p), 12), round(span(p, 2 * p), 12)


def _dropout(p, a, ctx):
    if p is None:
        return {"drop_text_prob": 0.0, "drop_image_prob": 0.0, "drop_both_prob": 0.0}, "the script drops no conditioning without the flag"
    text, image, both = dropout_probs(p)
    return {"drop_text_prob": text, "drop_image_prob": image, "drop_both_prob": both}, ""


def _seed(v, a, ctx):
    if v is None:
        default = _config_defaults()["seed"]
        return {"seed": default}, f"the script stops without --seed (it seeds a generator with it at start-up); {default} is instructsd's default"
    return {"seed": v}, ""


def _epochs(epochs, a, ctx):
    """The script's step count from epochs: epochs × ceil(ceil(ceil(rows / batch) / processes) / accumulation)."""
    if a["max_train_steps"] is not None:
        return {}, "no effect: --max_train_steps is given and wins, as in the script"
    if ctx.count_rows is None:
        raise Refused("needs the training split's row count; give --max_train_steps instead")
    rows = ctx.count_rows(a["dataset_name"])
    if a["max_train_samples"] is not None:
        rows = min(rows, a["max_train_samples"])
    batches = math.ceil(math.ceil(rows / a["train_batch_size"]) / ctx.num_processes)
    per_epoch = math.ceil(batches / a["gradient_accumulation_steps"])
    return ({"max_train_steps": epochs * per_epoch},
            f"{epochs} epochs × {per_epoch} optimizer step(s) per epoch ({rows} rows, batch {a['train_batch_size']}, "
            f"{ctx.num_processes} process(es), accumulation {a['gradient_accumulation_steps']}; partial batches count, as in the script)")


def _scale_lr(on, a, ctx):
    if not on:
        return {}, ""
    factor = a["gradient_accumulation_steps"] * a["train_batch_size"] * ctx.num_processes
    return ({"learning_rate": a["learning_rate"] * factor},
            f"{a['learning_rate']!r} × accumulation {a['gradient_accumulation_steps']} × batch {a['train_batch_size']} × "
            f"{ctx.num_processes} process(es)")


_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")


def _lr_scheduler(name, a, ctx):
    if name not in _SCHEDULES:
        raise Refused(f"'{name}' is not offered; instructsd has {', '.join(_SCHEDULES)}")
    return {"lr_scheduler": name}, ""


# report_to → the tracker key. `none` keeps only the JSONL logs, which are always written.
_TRACKERS = ("tensorboard", "wandb", "all", "none")


def _report_to(name, a, ctx):
    if name not in _TRACKERS:
        raise Refused(f"'{name}' is not offered; use one of {', '.join(_TRACKERS)}")
    return {"report_to": name}, ""


def _keep_last(limit, a, ctx):
    if limit is None:
        return {"keep_last": 0}, "the script keeps every checkpoint without the flag"
    # The script prunes to limit - 1 before each save, so 0 (or less) still keeps the newest one.
    return {"keep_last": max(limit, 1)}, ("" if limit >= 1 else "the script keeps the newest checkpoint for a limit below 1")


def _resume(value, a, ctx):
    if value is None:
        return {}, ""
    if value == "latest":
        return {"resume": "latest"}, ""
    # The script looks the folder's name up in output_dir; instructsd keeps its checkpoints in output_dir/checkpoints.
    for folder in (Path(value), Path(a["output_dir"]) / "checkpoints" / Path(value).name):
        if (folder / "state.json").is_file():
            return {"resume": str(folder)}, ""
    raise Refused(f"'{value}' is not an instructsd checkpoint (output_dir/checkpoints/step-N with state.json); "
                  f"the script's accelerate checkpoint-N folders cannot be resumed here; use 'latest' or an instructsd checkpoint")


def _revision(value, a, ctx):
    if value in (None, "main"):
        return {}, ""
    raise Refused(f"instructsd loads the default revision; download '{value}' with `hf download ID --revision {value} "
                  f"--local-dir DIR` and pass DIR as --pretrained_model_name_or_path")


def _refuse_if_set(reason: str) -> Convert:
    def convert(value, a, ctx):
        if value is None:
            return {}, ""
        raise Refused(reason)
    return convert


def _train_data_dir(value, a, ctx):
    if value is None:
        return {}, ""
    if a["dataset_name"] is not None:
        return {}, "no effect: --dataset_name is given and wins, as in the script"
    raise Refused("instructsd reads a saved dataset folder, not an imagefolder; load it once with datasets "
                  "(load_dataset('imagefolder', data_dir=...)), save_to_disk it with train/validation splits and pass --dataset_name FOLDER")


def _push_to_hub(on, a, ctx):
    repo = a["hub_model_id"] or Path(a["output_dir"]).name
    return {}, f"upload the trained model yourself: `hf upload {repo} {Path(a['output_dir']) / 'final'}`"


def _dataset(name, a, ctx):
    if name is None or Path(name).exists():
        return ({"dataset": name} if name else {}), ""
    return {"dataset": name}, "not a folder here, so it is read only as a hub id or parquet shards, with streaming=true given before `--`"


def _warmup(steps, a, ctx):
    if steps and a["lr_scheduler"] == "constant":
        return {"lr_warmup_steps": steps}, "no effect with the constant schedule, here as in the script"
    return {"lr_warmup_steps": steps}, ""


_VALIDATION = ("validation here edits rows of the dataset's validation split: put validation_every=N (optimizer steps) "
               "and num_validation_images=K (rows per task) before `--`")


# --- the table --------------------------------------------------------------------------------
# The script's flags in its own order (diffusers examples/instruct_pix2pix/train_instruct_pix2pix.py).
FLAGS: list[Flag] = [
    Flag("--pretrained_model_name_or_path", "str", None, "base_model",
         "Hub id or local diffusers folder; a 4-channel Stable Diffusion checkpoint gets conv_in widened to 8 inputs, as in the script."),
    Flag("--revision", "str", None, None, "Unless it is `main`: download the revision to a folder and pass that.", _revision, "refused"),
    Flag("--variant", "str", None, None, "instructsd reads a folder's default weight files; pass a folder that has them.",
         _refuse_if_set("instructsd reads the default weight files; pass a folder holding them as --pretrained_model_name_or_path"), "refused"),
    Flag("--dataset_name", "str", None, "dataset",
         "A folder saved with train/validation splits (`instructsd data build` or `save_to_disk`) as is; parquet shards or a hub id "
         "are read with `streaming=true` before `--`.", _dataset),
    Flag("--dataset_config_name", "str", None, None, "save the dataset config you want to a folder and pass that.",
         _refuse_if_set("instructsd reads one saved dataset; save that config with datasets' save_to_disk and pass the folder"), "refused"),
    Flag("--train_data_dir", "str", None, None,
         "No effect with --dataset_name (as in the script); alone it is refused: convert the imagefolder to a saved dataset.",
         _train_data_dir, "refused"),
    Flag("--original_image_column", "str", "input_image", "input_column"),
    Flag("--edited_image_column", "str", "edited_image", "edited_column"),
    Flag("--edit_prompt_column", "str", "edit_prompt", "prompt_column",
         caveat="a row with an empty instruction trains on the empty prompt in the script; here it gets a paraphrase from its task's bank."),
    Flag("--val_image_url", "str", None, None, _VALIDATION + ".", status="ignored"),
    Flag("--validation_prompt", "str", None, None, _VALIDATION + ".", status="ignored"),
    Flag("--num_validation_images", "int", 4, None,
         "the script edits one image K times; here num_validation_images (before `--`) counts validation rows per task.", status="ignored"),
    Flag("--validation_epochs", "int", 1, None, "epochs there; here validation_every (before `--`) counts optimizer steps.", status="ignored"),
    Flag("--max_train_samples", "int", None, "max_train_samples",
         caveat="the first N rows are used; the script takes N rows after a seeded shuffle."),
    Flag("--output_dir", "str", "instruct-pix2pix-model", "output_dir",
         caveat="the pipeline is saved to output_dir/final/ (the script: output_dir itself), checkpoints to output_dir/checkpoints/."),
    Flag("--cache_dir", "str", None, None,
         "hub downloads go where HF_HOME / HF_HUB_CACHE say; instructsd's cache_dir is the latent cache.", status="ignored"),
    Flag("--seed", "int", None, "seed", "The script stops without it; absent, instructsd's default seed is used.", _seed),
    Flag("--resolution", "int", 256, "resolution",
         caveat="the shorter side is resized, then cropped (aspect kept); the script resizes straight to a square, squashing other aspects."),
    Flag("--center_crop", "switch", False, "center_crop",
         caveat="the script's crop follows its square resize and so changes nothing; here the centre of the aspect-kept image is taken."),
    Flag("--random_flip", "switch", False, "random_flip", "Off unless given, as in the script.",
         caveat="the script flips each fetched batch as a whole; here each sample flips on its own (the same chance per sample)."),
    Flag("--train_batch_size", "int", 16, "train_batch_size"),
    Flag("--num_train_epochs", "int", 100, "max_train_steps",
         "Used only without --max_train_steps: epochs × the script's optimizer steps per epoch, counted from the saved dataset's "
         "train split (so a hub id or parquet shards need --max_train_steps).", _epochs),
    Flag("--max_train_steps", "int", None, "max_train_steps"),
    Flag("--gradient_accumulation_steps", "int", 1, "gradient_accumulation_steps"),
    Flag("--gradient_checkpointing", "switch", False, "gradient_checkpointing"),
    Flag("--learning_rate", "float", 1e-4, "learning_rate"),
    Flag("--scale_lr", "switch", False, "learning_rate",
         "learning_rate × accumulation × batch × processes, computed when the command runs.", _scale_lr),
    Flag("--lr_scheduler", "str", "constant", "lr_scheduler",
         "constant, constant_with_warmup, linear or cosine; the script's other diffusers schedules are refused.", _lr_scheduler),
    Flag("--lr_warmup_steps", "int", 500, "lr_warmup_steps",
         "The constant schedule ignores warm-up, here as in the script (both use diffusers' get_scheduler).", _warmup),
    Flag("--conditioning_dropout_prob", "float", None, "drop_text_prob, drop_image_prob, drop_both_prob",
         "One draw r per sample: text dropped when r < 2p, image when p ≤ r < 3p, so text only, both and image only each have "
         "probability p (for p ≤ 1/3; clipped at 1 above). Absent: no dropout, as in the script.", _dropout),
    Flag("--use_8bit_adam", "switch", False, "use_8bit_adam"),
    Flag("--allow_tf32", "switch", False, "allow_tf32"),
    Flag("--use_ema", "switch", False, "use_ema",
         "Decay 0.9999 warmed up as min(decay, (1 + t) / (10 + t)), diffusers' EMAModel defaults; final/ holds the EMA weights, as in the script."),
    Flag("--non_ema_revision", "str", None, None, "as --revision.", _revision, "refused"),
    Flag("--dataloader_num_workers", "int", 0, "dataloader_num_workers"),
    Flag("--adam_beta1", "float", 0.9, "adam_beta1"),
    Flag("--adam_beta2", "float", 0.999, "adam_beta2"),
    Flag("--adam_weight_decay", "float", 1e-2, "adam_weight_decay"),
    Flag("--adam_epsilon", "float", 1e-8, "adam_epsilon"),
    Flag("--max_grad_norm", "float", 1.0, "max_grad_norm"),
    Flag("--push_to_hub", "switch", False, None, "upload output_dir/final yourself with `hf upload REPO DIR`.",
         _push_to_hub, "ignored"),
    Flag("--hub_token", "str", None, None, "log in with `hf auth login` or set HF_TOKEN.", status="ignored"),
    Flag("--hub_model_id", "str", None, None, "the repo to name in `hf upload`.", status="ignored"),
    Flag("--logging_dir", "str", "logs", None, "TensorBoard events go to output_dir/tensorboard.", status="ignored"),
    # Absent (None) it sets nothing, so instructsd's own rule for `accelerate launch --mixed_precision` applies.
    Flag("--mixed_precision", "str", None, "mixed_precision", "Absent: not set, so accelerate's setting decides, as in the script."),
    Flag("--report_to", "str", "tensorboard", "report_to", "tensorboard, wandb, all or none (JSONL logs only); others are refused.", _report_to),
    Flag("--local_rank", "int", -1, None, "set by accelerate launch / torchrun.", status="ignored"),
    Flag("--checkpointing_steps", "int", 500, "checkpoint_every"),
    Flag("--checkpoints_total_limit", "int", None, "keep_last",
         "Absent: every checkpoint is kept (keep_last=0), as in the script; a limit below 1 keeps the newest one, as there.", _keep_last),
    Flag("--resume_from_checkpoint", "str", None, "resume",
         "`latest`, or an instructsd checkpoint folder (also looked up by name in output_dir/checkpoints); "
         "the script's own checkpoint-N folders cannot be resumed.", _resume),
    Flag("--enable_xformers_memory_efficient_attention", "switch", False, None,
         "attention is PyTorch's SDPA (diffusers' default processor), which needs no xformers.", status="ignored"),
]


# --- translation ------------------------------------------------------------------------------


@dataclass
class Translation:
    """The config values the flags stand for, and the lines that explain them."""

    values: dict[str, Any]
    lines: list[str]
    ignored: list[str]

    def report(self) -> str:
        out = [f"{SCRIPT} flags -> instructsd config:", *(f"  {line}" for line in self.lines)]
        if self.ignored:
            out.append(f"ignored (no effect in instructsd): {', '.join(self.ignored)}")
        return "\n".join(out)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit; the CLI reports one line
        raise InstructSDError(f"{SCRIPT} flags: {message}")


def _parse(flags: list[str]) -> tuple[set[str], dict[str, Any]]:
    """(dests the user gave, every dest's value with the script's defaults filled in)."""
    parser = _Parser(prog=SCRIPT, add_help=False)  # abbreviations allowed, as in the script
    types = {"str": str, "int": int, "float": float}
    for f in FLAGS:
        if f.kind == "switch":
            parser.add_argument(f.name, action="store_true", default=argparse.SUPPRESS)
        else:
            parser.add_argument(f.name, type=types[f.kind], default=argparse.SUPPRESS)
    given, extra = parser.parse_known_args(flags)
    if extra:
        raise InstructSDError(f"{SCRIPT} has no flag {' '.join(extra)}; the flags instructsd reads are listed in "
                              f"docs/training.md (python -m instructsd.train.diffusers_args --markdown)")
    given = vars(given)
    return set(given), {f.dest: given.get(f.dest, f.default) for f in FLAGS}


def _config_defaults() -> dict[str, Any]:
    """TrainConfig's defaults by key, a nested config's keys dotted (``validation.scheduler``)."""
    from instructsd.config import keys
    from instructsd.train.config import TrainConfig

    defaults = TrainConfig()
    return {key: functools.reduce(getattr, key.split("."), defaults) for key in keys(TrainConfig)}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def translate(flags: list[str], ctx: Context = Context()) -> Translation:
    """Turn the script's flags into TrainConfig values, applying its defaults where they differ from ours.

    Raises:
        InstructSDError: an unknown flag, a missing required one, or values instructsd cannot honour.
    """
    given, args = _parse(flags)
    if "pretrained_model_name_or_path" not in given:
        raise InstructSDError(f"{SCRIPT} flags: --pretrained_model_name_or_path is required (the base model)")
    if args["dataset_name"] is None and args["train_data_dir"] is None:
        raise InstructSDError(f"{SCRIPT} flags: give --dataset_name (a saved dataset folder, or a hub id with streaming=true)")
    defaults = _config_defaults()
    values: dict[str, Any] = {}
    lines, ignored, refused = [], [], []
    for f in FLAGS:
        value = args[f.dest]
        try:
            if f.convert is not None:
                out, detail = f.convert(value, args, ctx)
            else:
                out, detail = ({f.key: value} if f.key and value is not None else {}), ""
        except Refused as err:
            refused.append(f"{f.name}: {err}")
            continue
        shown = f.name if f.kind == "switch" else f"{f.name} {_show(value)}"
        result = " ".join(f"{k}={_show(v)}" for k, v in out.items())
        if f.dest in given:
            if f.status == "ignored":
                ignored.append(f.name)
                lines.append(f"{shown} -> ignored: {detail or f.note}")
            else:
                lines.append(f"{shown} -> {result or detail or 'nothing to change'}" + (f" — {detail}" if detail and result else ""))
                if f.caveat:
                    lines.append(f"    note: {f.caveat}")
        elif out and (detail or any(defaults[k] != v for k, v in out.items())):
            absent = (f"{f.name} not given" if f.default in (None, False) else f"{f.name} {_show(f.default)} (script default)")
            lines.append(f"{absent} -> {result}" + (f" — {detail}" if detail else ""))
        values.update(out)
    if refused:
        raise InstructSDError(f"{SCRIPT} flags instructsd cannot honour: " + "; ".join(refused))
    return Translation(values, lines, ignored)


def saved_train_rows(dataset: str) -> int:
    """Rows in the train split of a saved dataset folder (for --num_train_epochs)."""
    from instructsd.data.load import open_saved

    if not Path(dataset).is_dir():
        raise InstructSDError(f"--num_train_epochs needs the training rows of '{dataset}', which only a saved dataset folder "
                              f"gives here; pass --max_train_steps")
    data = open_saved(dataset)
    if "train" not in data:
        raise InstructSDError(f"dataset '{dataset}' has no 'train' split (has: {', '.join(data)})")
    return data["train"].num_rows


def split_tokens(tokens: list[str]) -> tuple[list[str], list[str]]:
    """(instructsd key=value overrides, the script's flags): the flags start at the first token beginning with '-'."""
    start = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
    overrides, flags = tokens[:start], tokens[start:]
    for item in overrides:
        if "=" not in item:
            raise InstructSDError(f"'{item}': with --from-diffusers-args the config comes from the script's flags after `--`; "
                                  f"only key=value overrides may come before them")
    return overrides, flags


def config_from_tokens(tokens: list[str], num_processes: int = 1):
    """The TrainConfig for ``[key=value …] --flag …``: the translated flags, then the overrides on top.

    Returns (TrainConfig, Translation).
    """
    from instructsd.config import from_dict, parse_overrides
    from instructsd.train.config import TrainConfig

    overrides, flags = split_tokens(tokens)
    translation = translate(flags, Context(num_processes=num_processes, count_rows=saved_train_rows))
    if overrides:
        translation.lines.append("key=value overrides (applied last): " + " ".join(overrides))
    values = {**translation.values, **parse_overrides(overrides, TrainConfig)}
    return from_dict(TrainConfig, values, source=f"the translated {SCRIPT} flags and key=value overrides"), translation


# --- the docs' migration table ----------------------------------------------------------------

BEGIN = ("<!-- generated from src/instructsd/train/diffusers_args.py by "
         "`python -m instructsd.train.diffusers_args --update-doc docs/training.md`; do not edit by hand -->")
END = "<!-- end of the generated table -->"


def migration_table_markdown() -> str:
    """The docs' table: every flag of the script, its default there, and what instructsd makes of it."""
    rows = [f"| `{SCRIPT}` flag (its default) | instructsd | notes |", "| --- | --- | --- |"]
    for f in FLAGS:
        if f.name == "--pretrained_model_name_or_path":
            default = "required"
        elif f.kind == "switch":
            default = "off"
        else:
            default = "none" if f.default is None else f"`{f.default}`"
        target = {"ignored": "ignored", "refused": "refused"}.get(f.status) or ", ".join(f"`{k}`" for k in f.key.split(", "))
        notes = " ".join(text[:1].upper() + text[1:] for text in (f.note, f.caveat) if text)
        rows.append(f"| `{f.name}` ({default}) | {target} | {notes} |")
    mapped = {k for f in FLAGS if f.key for k in f.key.split(", ")}
    own = [k for k in _config_defaults() if k not in mapped]
    rows.append(f"| (no flag) | {', '.join(f'`{k}`' for k in own)} | instructsd only; set them as key=value before `--`. |")
    return "\n".join(rows) + "\n"


def update_doc(path: str | Path) -> bool:
    """Rewrite the generated table between the markers in ``path``; True if it changed."""
    path = Path(path)
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise InstructSDError(f"'{path}' lacks the generated-table markers; add the lines\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{migration_table_markdown()}{END}{tail}"
    if new == text:
        return False
    atomic_write_text(path, new)
    return True


def generated_table_in(path: str | Path) -> str:
    """The table between the markers of ``path`` (what :func:`update_doc` wrote)."""
    text = Path(path).read_text()
    return text.split(BEGIN, 1)[1].split(END, 1)[0].lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructsd.train.diffusers_args", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="Print the migration table.")
    parser.add_argument("--update-doc", metavar="PATH", help="Rewrite the table between the markers in PATH (docs/training.md).")
    args = parser.parse_args(argv)
    if args.update_doc:
        print(("updated " if update_doc(args.update_doc) else "up to date: ") + args.update_doc)
    if args.markdown or not args.update_doc:
        sys.stdout.write(migration_table_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
