"""Data stage: read photos, define edit tasks, build and load the instruction dataset."""

from instructsd.data.build import COLUMNS, SPLITS, build_dataset, load_instruction_dataset
from instructsd.data.images import IMAGE_EXTENSIONS, find_images, load_image, to_rgb
from instructsd.data.samples import SAMPLE_FILES, sample_images
from instructsd.data.tasks import TASKS, Task, get_task

__all__ = [
    "COLUMNS",
    "IMAGE_EXTENSIONS",
    "SAMPLE_FILES",
    "SPLITS",
    "TASKS",
    "Task",
    "build_dataset",
    "find_images",
    "get_task",
    "load_image",
    "load_instruction_dataset",
    "sample_images",
    "to_rgb",
]
