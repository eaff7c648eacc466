"""Data stage: read photos, define edit tasks, build and load the instruction dataset."""

from instructsd.data.build import COLUMNS, SPLITS, build_dataset, load_instruction_dataset
from instructsd.data.chunked import build_mixture, export_parquet, join_parts, push_to_hub
from instructsd.data.degradations import DEGRADATIONS, GROUPS, Degradation, degrade, get_degradation
from instructsd.data.images import IMAGE_EXTENSIONS, find_images, load_image, to_rgb
from instructsd.data.instructions import (
    BANK_TASKS,
    InstructionBank,
    canonical_instruction,
    get_bank,
    sample_instruction,
)
from instructsd.data.mixture import Mixture, load_mixture, parse_mixture
from instructsd.data.samples import SAMPLE_FILES, sample_images
from instructsd.data.layouts import LAYOUTS, Layout, PairRule
from instructsd.data.sources import FolderSource, HubSource, PairedSource, SampleSource
from instructsd.data.tasks import TASKS, Task, get_task
from instructsd.data.teachers import load_teacher

__all__ = [
    "BANK_TASKS",
    "COLUMNS",
    "DEGRADATIONS",
    "GROUPS",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "SAMPLE_FILES",
    "SPLITS",
    "TASKS",
    "Degradation",
    "FolderSource",
    "HubSource",
    "InstructionBank",
    "Layout",
    "Mixture",
    "PairRule",
    "PairedSource",
    "SampleSource",
    "Task",
    "build_dataset",
    "build_mixture",
    "canonical_instruction",
    "degrade",
    "export_parquet",
    "find_images",
    "get_bank",
    "get_degradation",
    "get_task",
    "join_parts",
    "load_image",
    "load_instruction_dataset",
    "load_mixture",
    "load_teacher",
    "parse_mixture",
    "push_to_hub",
    "sample_images",
    "sample_instruction",
    "to_rgb",
]
