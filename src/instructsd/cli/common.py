"""Small helpers shared by the subcommands."""

from __future__ import annotations

import typer

# The dataset options of `eval` and `compare`: the keys TrainConfig names (input_column, …),
# so one dataset is read the same way by training and evaluation (issue 12).
DATASET_HELP = ("Dataset: a folder from `instructsd data build` (or any DatasetDict.save_to_disk), a folder or glob "
                "of parquet shards, or a hub dataset id (its parquet shards, downloaded).")
INPUT_COLUMN = typer.Option("input_image", help="Column holding the image to edit (train config: input_column).")
EDITED_COLUMN = typer.Option("edited_image", help="Column holding the edited target image (train config: edited_column).")
PROMPT_COLUMN = typer.Option("edit_prompt", help="Column holding the instruction (train config: prompt_column).")
TASK_COLUMN = typer.Option("task", help="Column naming each row's task, if any (train config: task_column).")
GROUP_COLUMN = typer.Option("source", help="Column naming the photo or scene each row came from; bootstrap "
                                           "intervals resample these (rows without one count as their own photo).")


def split_csv(text: str) -> list[str]:
    """'a, b,,c' → ['a', 'b', 'c']."""
    return [part.strip() for part in text.split(",") if part.strip()]
