"""``python -m instructsd.cli`` (e.g. under ``accelerate launch -m instructsd.cli train …``)."""

from instructsd.cli import main

main()
