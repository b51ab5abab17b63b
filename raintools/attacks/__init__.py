"""Adversarial attacks on a model, and RAIN under them: GCG suffix optimisation (`gcg`) and the
resumable attack runner with its attack-success-rate table (`run`).

Layer: builds on the decoder and on `raintools.experiments` (data loaders, judges, records);
imports nothing from `raintools.views` nor from the CLI.
"""

from .gcg import GCGConfig, GCGResult, gcg_attack, gcg_individual, gcg_universal

__all__ = ["GCGConfig", "GCGResult", "gcg_attack", "gcg_individual", "gcg_universal"]
