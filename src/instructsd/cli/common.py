"""Small helpers shared by the subcommands."""

from __future__ import annotations


def split_csv(text: str) -> list[str]:
    """'a, b,,c' → ['a', 'b', 'c']."""
    return [part.strip() for part in text.split(",") if part.strip()]
