"""The blog post's experiments as recipes: one YAML each, run by `instructsd experiment NAME`.

- ``ip2p-vs-sd`` (and ``ip2p-vs-sd-full``): fine-tune from InstructPix2Pix vs from Stable
  Diffusion on the same data, validation curves side by side.
- ``cartoonizer``: the fine-tuned cartoonizer vs the pretrained model vs the teacher.
- ``lowlevel-mixture``: one model for denoise / low-light / deblur, scored per task.
"""

from instructsd.experiments.recipe import ExperimentConfig, experiment_configs, load_experiment, run_experiment

__all__ = ["ExperimentConfig", "experiment_configs", "load_experiment", "run_experiment"]
