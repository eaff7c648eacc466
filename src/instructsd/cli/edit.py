"""`instructsd edit`: edit images — one file, a folder or a glob — by one or more instructions."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from instructsd.edit.guidance import DEFAULT_GUIDANCE, DEFAULT_IMAGE_GUIDANCE, DEFAULT_STEPS


def edit_cmd(
    model: str = typer.Option(..., help="InstructPix2Pix model: hub id or local diffusers folder."),
    image: List[str] = typer.Option(..., help="Image file, folder (recursive) or quoted glob; repeatable."),
    instruction: List[str] = typer.Option(..., help='What to do, e.g. "Cartoonize the image."; repeatable.'),
    out: Path = typer.Option(..., help="Output folder (new, empty, or one instructsd wrote); or a .png file when editing one image once."),
    overwrite: bool = typer.Option(False, help="Replace files an earlier instructsd edit wrote there (never anything else)."),
    seed: List[int] = typer.Option([0], help="Seed; repeatable. The same seed gives the same edit."),
    steps: int = typer.Option(DEFAULT_STEPS, help="Sampling steps."),
    image_guidance: float = typer.Option(DEFAULT_IMAGE_GUIDANCE, help="Image guidance scale (higher stays closer to the input); any value >= 0, all applied (docs/editing.md)."),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, help="Text guidance scale (higher follows the instruction harder); any value >= 0, all applied."),
    scheduler: str = typer.Option("auto", help="auto (the model's own sampler; Euler ancestral for a hub InstructPix2Pix), euler_ancestral, euler, dpmpp, ddim or unipc."),
    negative_prompt: Optional[str] = typer.Option(None, help="What the edit should avoid."),
    batch_size: int = typer.Option(1, help="Edits of one image sampled together."),
    max_side: Optional[int] = typer.Option(None, help="Longer side of the outputs (default: the input's with --highres residual/guided, the model's native side with --highres off)."),
    highres: str = typer.Option("residual", help="residual or guided: the model edits at its native size and the change is carried to full size (bounded memory for any input); off: the model edits at --max-side (docs/editing.md)."),
    native_side: Optional[int] = typer.Option(None, help="Longer side the model edits at with --highres residual/guided (default: the model's)."),
    max_pixels: int = typer.Option(50_000_000, help="Refuse inputs with more pixels than this (checked before decoding)."),
    sweep: List[str] = typer.Option([], help="Grid over a setting, e.g. image_guidance=1.0,1.5,2.0; up to two."),
    attention_slicing: bool = typer.Option(False, help="Attention in slices: less memory, a little slower."),
    vae_tiling: bool = typer.Option(False, help="Encode/decode large images tile by tile."),
    cpu_offload: bool = typer.Option(False, help="Keep models on the CPU until used (CUDA + accelerate)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the UNet (slow first edit)."),
    device: Optional[str] = typer.Option(None, help="cuda, mps or cpu (default: the best available)."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16."),
    engine: str = typer.Option("local", help="local, or ray: a folder's edits spread over Ray actors, one pipeline each (docs/scale.md)."),
    address: Optional[str] = typer.Option(None, help="With --engine ray: the Ray cluster (auto, ray://HEAD:10001); default a local instance."),
    actors: Optional[int] = typer.Option(None, help="With --engine ray: pipelines at once (default one per GPU, or one)."),
) -> None:
    """Edit images by instructions; every output PNG records how it was made."""
    import dataclasses

    from tqdm import tqdm

    from instructsd.data.ray_engine import check_engine
    from instructsd.edit.batch import edit_batch, parse_sweep, planned_files, sweep_grid
    from instructsd.edit.editor import EditSettings, bounded_settings, configure_pipeline, edit_images, load_pipeline
    from instructsd.edit.inputs import collect_inputs, read_image
    from instructsd.edit.io import save_png
    from instructsd.edit.outputs import check_folder, check_not_an_input, check_single_file, is_single_file, open_folder
    from instructsd.errors import InstructSDError

    if any(not text.strip() for text in instruction):
        raise InstructSDError('--instruction is empty; say what to change, e.g. --instruction "Cartoonize the image."')
    settings = EditSettings(
        num_inference_steps=steps, image_guidance_scale=image_guidance, guidance_scale=guidance,
        scheduler=scheduler, negative_prompt=negative_prompt, max_side=max_side, highres=highres,
        native_side=native_side,
    )
    sweeps = [parse_sweep(s) for s in sweep]
    check_engine(engine, address)
    sources = collect_inputs(image)
    # Where the outputs go is settled before any model loads (instructsd.edit.outputs).
    check_not_an_input(out, sources)
    single_file = is_single_file(out)
    if single_file and (len(sources) != 1 or len(instruction) != 1 or len(seed) != 1 or sweeps):
        raise InstructSDError(f"--out {out} is a file, but this run makes several images; pass a folder")
    if engine == "ray" and (single_file or sweeps):
        raise InstructSDError("--engine ray edits a batch into a folder; drop it for one file or a --sweep")
    if sweeps and len(sources) * len(instruction) != 1:
        raise InstructSDError("--sweep works on one image and one instruction")
    root = Path(image[0]) if len(image) == 1 and Path(image[0]).is_dir() else None
    sweep_name = f"{sources[0].stem}_sweep.png"
    if single_file:
        check_single_file(out, overwrite)
    elif sweeps:
        check_folder(out, [sweep_name, sweep_name[: -len(".png")] + ".json"], overwrite)
    else:
        check_folder(out, planned_files(sources, len(instruction), seed, root), overwrite)

    total = len(sources) * len(instruction) * len(seed)
    if engine == "ray":  # each actor loads the model itself (instructsd.edit.ray_batch)
        from instructsd.edit.ray_batch import edit_batch_on_ray

        with tqdm(total=total, desc="editing", unit="edit") as bar:
            result = edit_batch_on_ray(
                model, sources, instruction, seed, out, settings, batch_size=batch_size, model_name=model, root=root,
                max_pixels=max_pixels, progress=bar.update, overwrite=overwrite, device=device, dtype=dtype,
                configure={"attention_slicing": attention_slicing, "vae_tiling": vae_tiling,
                           "cpu_offload": cpu_offload, "compile_unet": compile}, address=address, actors=actors)
        return _report(result, out)
    pipe = load_pipeline(model, device=None if cpu_offload else device, dtype=dtype)
    configure_pipeline(pipe, attention_slicing=attention_slicing, vae_tiling=vae_tiling,
                       cpu_offload=cpu_offload, compile_unet=compile)
    settings = bounded_settings(settings, pipe)
    meta = {"model": model, **dataclasses.asdict(settings)}

    if single_file:  # the simple form: one image, one instruction, one seed → out.png
        source = read_image(sources[0], max_pixels=max_pixels, max_side=settings.max_side)
        (result,) = edit_images(pipe, [source], list(instruction), settings, seeds=list(seed))
        save_png(result, out, {**meta, "image": str(sources[0]), "instruction": instruction[0], "seed": seed[0]})
        typer.echo(f"wrote {out}")
        return

    if sweeps:
        source = read_image(sources[0], max_pixels=max_pixels, max_side=settings.max_side)
        grid, cells = sweep_grid(pipe, source, instruction[0], sweeps, settings, seed=seed[0])
        path = open_folder(out) / sweep_name
        save_png(grid, path, {**meta, "image": str(sources[0]), "instruction": instruction[0], "seed": seed[0],
                              "sweep": [{"setting": name, "values": values} for name, values in sweeps]})
        typer.echo(f"wrote {path} ({len(cells)} edits)")
        return

    with tqdm(total=total, desc="editing", unit="edit") as bar:
        result = edit_batch(pipe, sources, instruction, seed, out, settings, batch_size=batch_size,
                            model_name=model, root=root, max_pixels=max_pixels, progress=bar.update,
                            overwrite=overwrite)
    _report(result, out)


def _report(result, out: Path) -> None:
    """What a batch wrote, and where its failures are listed."""
    from instructsd.edit.batch import FAILURES
    from instructsd.errors import InstructSDError

    typer.echo(f"wrote {len(result.outputs)} images to {out}")
    if result.failures and not result.outputs:
        raise InstructSDError(f"every input failed ({len(result.failures)}); see {out / FAILURES}")
    if result.failures:
        typer.echo(f"{len(result.failures)} input(s) failed; see {out / FAILURES}", err=True)
