"""Experiments around the decoder: evaluation data (`data`), alignment goals (`tasks`), judges of
the answers (`judges`, `human`), the resumable, shardable evaluation runner (`runner`, `methods`,
`records`, `stats`) and the `make demo` comparison (`demo`).

Layer: builds on the decoder (`raintools.*` top-level modules); imports nothing from
`raintools.attacks` or `raintools.views`, nor from the CLI. Submodules are imported by name
(`from raintools.experiments.runner import run_eval`) so that importing one stays light.
"""
