"""Named sweeps for `illada sweep --config=config:NAME`: one module per sweep, in this package.

A sweep module defines `experiment()` (the base `fdl.Config[Experiment]`, also usable by itself:
`illada train --config=config:illada_jax.config.sweeps.NAME:experiment`) and `sweep()`, which
returns the override sets: a list, or a dict keyed by run name, whose items are either a dict of
`{"section.field": value}` (applied as `set:` directives) or a list of directive strings
(`"set:train.steps=100"`, `"fiddler:antithetic_time"`). See `illada_jax/train/sweep.py`.
"""
