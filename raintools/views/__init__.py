"""What a reader looks at: figures (`plots`), the tree explorer widget (`widgets`), the tables and
sweeps the notebooks show (`analysis`) and the notebook runner (`notebooks`, `make figures`).

Layer: the top of the package; reads traces and results from the decoder, `raintools.experiments`
and `raintools.attacks`; imports nothing from the CLI.
"""
