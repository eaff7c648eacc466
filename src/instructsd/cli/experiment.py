"""`instructsd experiment NAME`: run one of the post's experiments from its YAML."""

from __future__ import annotations

from typing import List, Optional

import typer


def experiment_cmd(
    name: str = typer.Argument(..., help="Shipped experiment (ip2p-vs-sd, ip2p-vs-sd-full, cartoonizer, "
                                         "lowlevel-mixture) or a YAML file; 'list' shows them."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. output_dir=runs/x stages=2."),
) -> None:
    """Data → fine-tune in stages with validation curves → compare against identity and ground truth."""
    from instructsd.recipes.experiment import experiment_configs, load_experiment, run_experiment

    if name == "list":
        for key, path in sorted(experiment_configs().items()):
            first = next((line[2:] for line in path.read_text().splitlines() if line.startswith("# ")), "")
            typer.echo(f"{key:<20} {first}")
        return
    cfg = load_experiment(name, overrides or [])
    report = run_experiment(cfg)
    typer.echo(f"report: {report}")
