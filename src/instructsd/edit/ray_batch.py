"""Batch editing on Ray: one pipeline per actor, each input one Ray Data row (issue 19).

``instructsd edit --engine ray`` is :func:`instructsd.edit.batch.edit_batch` spread over a pool
of Ray actors. Each actor loads the model once -- on its own GPU where the cluster has GPUs,
else on its share of the CPUs -- and runs :func:`~instructsd.edit.batch.edit_one`, the local
engine's function for one input, so the outputs and their metadata (PNG text chunks, sidecar
JSON) are the local run's. The driver checks and opens the output folder before any actor
starts and writes ``failures.jsonl`` itself, in input order (Ray Data keeps the rows' order),
so it too is the local run's. The output folder must be on storage every node sees at the
same path, as must the inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from instructsd.data.ray_engine import ray_session
from instructsd.edit.batch import BatchResult, batch_jobs, edit_one, open_batch_folder, output_stems, record
from instructsd.edit.editor import EditSettings, bounded_settings, configure_pipeline, load_pipeline
from instructsd.edit.inputs import DEFAULT_MAX_PIXELS
from instructsd.errors import InstructSDError
from instructsd.models.loading import check_model, resolve_model


class _Editor:
    """A Ray actor: one pipeline, loaded once, that edits the rows it is given."""

    def __init__(self, model: str, settings: EditSettings, jobs, out_dir: str, *, batch_size: int, model_name: str,
                 max_pixels: int, device: str | None, dtype: str, configure: dict, threads: int | None) -> None:
        import torch

        if threads:  # a CPU actor: as many threads as the CPUs Ray gave it, no more
            torch.set_num_threads(threads)
        self.pipe = load_pipeline(model, device=None if configure.get("cpu_offload") else device, dtype=dtype)
        configure_pipeline(self.pipe, **configure)
        self.settings = bounded_settings(settings, self.pipe)
        self.jobs, self.out_dir = jobs, Path(out_dir)
        self.options = {"batch_size": batch_size, "model_name": model_name, "max_pixels": max_pixels}

    def __call__(self, batch: dict) -> dict:
        written, errors = [], []
        for source, stem in zip(batch["source"], batch["stem"]):
            files, error = edit_one(self.pipe, Path(source), str(stem), self.jobs, self.out_dir, self.settings,
                                    **self.options)
            written.append(json.dumps([str(f) for f in files]))
            errors.append("" if error is None else error)  # an error message is never empty
        return {"index": batch["index"], "written": written, "error": errors}


def edit_batch_on_ray(
    model: str,
    sources: Sequence[Path],
    instructions: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    settings: EditSettings = EditSettings(),
    *,
    batch_size: int = 1,
    model_name: str = "",
    root: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    device: str | None = None,
    dtype: str = "fp32",
    configure: dict | None = None,
    address: str | None = None,
    actors: int | None = None,
) -> BatchResult:
    """:func:`~instructsd.edit.batch.edit_batch` on Ray: the same files, written by a pool of actors.

    Args:
        model: what each actor loads (:func:`~instructsd.edit.editor.load_pipeline`), with
            ``device``, ``dtype`` and the ``configure`` options of
            :func:`~instructsd.edit.editor.configure_pipeline`.
        actors: pipelines to run at once; default one per GPU of the cluster, or one for a
            cluster without GPUs. CPU actors share the cluster's CPUs evenly. Each holds a whole
            model (memory per actor: docs/scale.md).
        address: the Ray cluster (``auto``, ``ray://HEAD:10001``); default a local instance
            (an open Ray session is used as it is).
        The rest as for ``edit_batch``.
    """
    if actors is not None and actors < 1:
        raise InstructSDError(f"--actors must be at least 1, got {actors}")
    check_model(resolve_model(model))  # here, before a cluster's worth of actors fail to load it
    out_dir = open_batch_folder(out_dir, sources, instructions, seeds, root, overwrite)
    jobs, stems = batch_jobs(instructions, seeds), output_stems(sources, root)
    result = BatchResult()
    if not sources:
        return result
    with ray_session(address) as ray:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        n = min(actors or gpus or 1, len(sources))
        threads = None if gpus else max(1, cpus // n)
        per_actor = {"num_gpus": 1} if gpus else {"num_cpus": threads}
        rows = [{"index": i, "source": str(s), "stem": stems[s]} for i, s in enumerate(sources)]
        context = ray.data.DataContext.get_current()
        kept_order = context.execution_options.preserve_order
        context.execution_options.preserve_order = True  # rows come back in input order: failures.jsonl's
        try:
            edited = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                _Editor, batch_size=1, concurrency=n, **per_actor,
                fn_constructor_args=(model, settings, jobs, str(out_dir)),
                fn_constructor_kwargs={"batch_size": batch_size, "model_name": model_name, "max_pixels": max_pixels,
                                       "device": device, "dtype": dtype, "configure": dict(configure or {}),
                                       "threads": threads},
            )
            for row in edited.iter_rows():
                written = [Path(f) for f in json.loads(row["written"])]
                record(result, out_dir, sources[int(row["index"])], written, row["error"] or None)
                if progress is not None:
                    progress(len(jobs))
        finally:
            context.execution_options.preserve_order = kept_order
    return result
