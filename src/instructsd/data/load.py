"""Read one split of an instruction dataset: the one reader for training, eval and compare (issue 12).

A ``dataset`` is one of

- a folder written by ``save_to_disk`` with splits (``instructsd data build``, or your own
  ``DatasetDict.save_to_disk``);
- parquet shards: a folder (``instructsd data export-parquet``, or ``train-*.parquet`` /
  ``validation-*.parquet`` files) or a glob, which is all ``train``;
- a hub dataset id (``owner/name``): its parquet shards, downloaded split by split.

Columns are named by the keys TrainConfig uses -- ``input_column``, ``edited_column``,
``prompt_column``, ``task_column`` -- in the train config and as ``--input-column`` … in
``instructsd eval`` and ``instructsd compare``, so a dataset with the post's columns
(``original_image``, ``edit_prompt``, ``cartoonized_image``) is read the same way by all three.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import datasets

from instructsd.errors import InstructSDError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
COLUMNS: tuple[str, ...] = ("input_image", "edit_prompt", "edited_image", "task", "source", "group", "part",
                            "edit_params")
"""The one schema instructsd's builder writes, in order (a mixture's ``columns`` may rename the first
three): images, instruction, the row's task, its source photo, its group (photo, scene or sequence:
what the split keeps together), the official part of a paired dataset ("" for photos) and, for a
photo operation, its parameters as JSON (``{"op": "exposure", "ev": 1.0}``; "" for other tasks)."""
SPLITS: tuple[str, ...] = ("train", "validation")
"""Splits every built dataset has; paired datasets with official test parts add ``test``."""
_REQUIRED = COLUMNS[:5]  # datasets built before issue 12 have no group/part columns, before 15 no edit_params
_BUILD_HINT = "build one with `instructsd data build`, or save a DatasetDict with train/validation splits (save_to_disk)"


@dataclass(frozen=True)
class Columns:
    """Which dataset column holds what; the names and defaults of TrainConfig's ``*_column`` keys."""

    input_column: str = "input_image"  # the image to edit
    edited_column: str = "edited_image"  # the edited (target) image
    prompt_column: str = "edit_prompt"  # the instruction
    task_column: str = "task"  # the row's task (optional: per-task tables, deferred instructions)
    group_column: str = "source"  # the photo or scene a row was cropped from (optional: eval's bootstrap)

    @classmethod
    def of(cls, cfg) -> Columns:
        """The columns a config names (any object with some ``*_column`` attributes)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)})

    @property
    def required(self) -> dict[str, str]:
        """{key: column} every split must have."""
        return {"input_column": self.input_column, "edited_column": self.edited_column,
                "prompt_column": self.prompt_column}


def _key_hint(keys: Sequence[str]) -> str:
    keys = list(keys) or ["input_column", "edited_column", "prompt_column"]
    train = " ".join(f"{k}=NAME" for k in keys)
    cli = " ".join(f"--{k.replace('_', '-')} NAME" for k in keys)
    return f"name the dataset's columns with {train} (train config) or {cli} (eval, compare)"


# --- saved folders ------------------------------------------------------------------------


def open_saved(path: str | Path) -> datasets.DatasetDict:
    """A folder written by ``save_to_disk`` with splits, or a one-line error saying how to make one.

    The one place that opens saved datasets: the builder, the trainer, eval, export and push use it.
    """
    path = Path(path)
    if not path.exists():
        raise InstructSDError(f"no dataset at '{path}'; {_BUILD_HINT}")
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as err:  # FileNotFoundError for a non-dataset folder
        raise InstructSDError(f"'{path}' is not a readable saved dataset ({err}); {_BUILD_HINT}") from err
    if not isinstance(dataset, datasets.DatasetDict):
        raise InstructSDError(f"'{path}' holds a single dataset without splits; expected train and validation splits; {_BUILD_HINT}")
    return dataset


def load_instruction_dataset(path: str | Path) -> datasets.DatasetDict:
    """A saved dataset checked to have :data:`SPLITS` and the columns instructsd builds.

    Raises:
        InstructSDError: ``path`` is missing or not a saved ``DatasetDict``, or it lacks a
            split of :data:`SPLITS`, a column, or images in an image column.
    """
    path = Path(path)
    dataset = open_saved(path)
    for split in SPLITS:
        if split not in dataset:
            raise InstructSDError(
                f"dataset '{path}' has no '{split}' split (it has: {', '.join(dataset) or 'none'}); {_BUILD_HINT}")
    for split in SPLITS:
        features = dataset[split].features
        missing = [c for c in _REQUIRED if c not in features]
        if missing:
            raise InstructSDError(f"dataset '{path}' split '{split}' lacks column(s) {', '.join(missing)} "
                                  f"(expected {', '.join(_REQUIRED)}); {_BUILD_HINT}")
        for col in ("input_image", "edited_image"):
            if not isinstance(features[col], datasets.Image):
                raise InstructSDError(f"dataset '{path}' split '{split}' column '{col}' holds {features[col]}, "
                                      f"not images; {_BUILD_HINT}")
    return dataset


# --- parquet shards -----------------------------------------------------------------------


def parquet_files(dataset: str, split: str) -> list[str]:
    """The parquet shards of one split.

    A glob names the training shards. In a folder or hub repo the split comes from the file
    names (``train.parquet``, ``train-*.parquet``, ``data/train-00000-of-00004.parquet``, …, as
    datasets infers them); a folder of other ``*.parquet`` names is all ``train``.
    """
    from datasets.data_files import DataFilesDict, get_data_patterns, resolve_pattern

    if any(c in dataset for c in "*?["):
        try:
            files = resolve_pattern(dataset, base_path="") if split == "train" else []
        except FileNotFoundError:
            files = []
    else:
        path = Path(dataset)
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            raise InstructSDError(
                f"'{dataset}' is a saved datasets folder, not parquet shards; train on it with streaming=false, or write "
                f"shards with `instructsd data export-parquet {dataset} OUT` and set dataset=OUT")
        if path.is_dir():
            base = str(path.absolute())
        elif HUB_ID.match(dataset):
            base = f"hf://datasets/{dataset}"
        else:
            raise InstructSDError(f"dataset '{dataset}' (streaming) is not a folder of parquet shards, a glob or a hub dataset id")
        try:
            found = DataFilesDict.from_patterns(get_data_patterns(base), base_path=base)
        except FileNotFoundError:
            found = {}
        except Exception as err:  # noqa: BLE001 -- hub: network, auth, no such repo
            raise InstructSDError(f"could not list the files of '{dataset}' ({type(err).__name__}: {err})") from err
        files = found.get(split, [])
    files = [f for f in files if f.endswith(".parquet")]
    if not files:
        raise InstructSDError(
            f"no parquet shards for split '{split}' in '{dataset}'; name them {split}.parquet or {split}-*.parquet "
            f"(a folder of other *.parquet names, or a glob, is all 'train')")
    return list(files)


def _is_hub_id(dataset: str) -> bool:
    return not Path(dataset).exists() and HUB_ID.match(dataset) is not None


def _hub_hint(dataset: str, split: str) -> str:
    return (f"'{dataset}' is no local path, so it was read as a hub dataset id; training reads a hub dataset with streaming=true (dataset={dataset} streaming=true: parquet shards read "
            f"row by row), or without streaming downloads its '{split}' shards, as eval and compare do -- that needs "
            f"the network (HF_HUB_OFFLINE unset) and a dataset of parquet files; else download it "
            f"(`huggingface-cli download --repo-type dataset {dataset} --local-dir DIR`) and pass DIR. "
            f"If its columns are not input_image/edited_image/edit_prompt, {_key_hint([])}")


# --- the reader ---------------------------------------------------------------------------


def load_split(dataset: str | Path, split: str, columns: Sequence[str] | Columns = Columns()) -> datasets.Dataset:
    """One split of ``dataset`` (saved folder, parquet shards or hub id) as a map-style Dataset,
    checked to have ``columns`` (a list of names, or a :class:`Columns` whose required ones are checked).

    Raises:
        InstructSDError: no such dataset or split, or a column missing -- naming the key to set.
    """
    name = str(dataset)
    path = Path(name)
    saved = path.is_dir() and (path / "dataset_dict.json").is_file()
    parquet = not saved and (any(c in name for c in "*?[") or path.is_dir() or name.endswith(".parquet") or _is_hub_id(name))
    if parquet:
        try:
            files = [name] if name.endswith(".parquet") and path.is_file() else parquet_files(name, split)
            rows = datasets.load_dataset("parquet", data_files={split: files}, split=split)
        except InstructSDError as err:
            raise InstructSDError(f"{err}; {_hub_hint(name, split)}" if _is_hub_id(name) else str(err)) from err
        except Exception as err:  # noqa: BLE001 -- datasets' download / parse errors
            hint = _hub_hint(name, split) if _is_hub_id(name) else "check the shards are parquet files written by datasets"
            raise InstructSDError(f"could not read split '{split}' of '{name}' ({type(err).__name__}: {err}); {hint}") from err
    else:
        data = open_saved(path)
        if split not in data:
            raise InstructSDError(f"dataset '{name}' has no '{split}' split (has: {', '.join(data) or 'none'})")
        rows = data[split]
    wanted = columns.required if isinstance(columns, Columns) else {c: c for c in columns}
    missing = {k: c for k, c in wanted.items() if c not in rows.column_names}
    if missing:
        keys = [k for k in missing if k.endswith("_column")]
        raise InstructSDError(
            f"dataset '{name}' split '{split}' lacks column(s) {', '.join(missing.values())} "
            f"(columns: {', '.join(rows.column_names)}); {_key_hint(keys)}")
    return rows
