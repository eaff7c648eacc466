"""`instructsd config …`: inspect configs and presets."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Inspect configs and presets.")


@app.command("show")
def config_show(
    config: Optional[str] = typer.Argument(None, help="Preset name or YAML file; omit for the defaults."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides; a nested key dotted, e.g. validation.scheduler=ddim."),
) -> None:
    """Print the resolved training config, one documented key per line (nested settings as indented blocks)."""
    import tempfile

    from instructsd.config import load_config, save_config
    from instructsd.train.config import TrainConfig

    cfg = load_config(TrainConfig, config, overrides or [])
    with tempfile.TemporaryDirectory() as tmp:
        typer.echo(save_config(cfg, Path(tmp) / "config.yaml").read_text())


@app.command("presets")
def config_presets() -> None:
    """List the named presets."""
    from instructsd.config import presets

    for name, path in sorted(presets().items()):
        typer.echo(f"{name}\t{path}")
