"""Recipes: every end-to-end flow, built from the layers below (data, models, edit, eval, train).

- ``quickstart``: the post's comparison in miniature on a CPU (`instructsd quickstart`).
- ``pretrain_tiny``: the tiny instruction-following base that ships with the package
  (`instructsd model pretrain-tiny`).
- ``experiment``: the blog post's experiments, one YAML each under ``experiments/``
  (`instructsd experiment NAME`).

Each recipe builds its ``TrainConfig`` from a preset with ``dataclasses.replace``, so every
value it sets is a typed keyword, never a formatted ``key=value`` string. Nothing below this
package imports it.
"""
