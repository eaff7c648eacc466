"""Data stage: read photos, name edit tasks, build (one builder: mixture -> plan -> rows -> write) and load datasets."""

from instructsd.data.build import build_dataset
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
from instructsd.data.load import COLUMNS, SPLITS, load_instruction_dataset
from instructsd.data.sources import FolderSource, HubSource, MemorySource, PairedSource, SampleSource
from instructsd.data.tasks import TASKS, Task, get_task
from instructsd.data.teachers import load_teacher
from instructsd.data.write import build_mixture, export_parquet, join_parts, push_to_hub

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
    "MemorySource",
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
