"""The run directory: what a training run writes and every other command reads.

  layout.py      its file names, defined once, and where a fine-tune's source run is now
  workdir.py     what training checks of it before building anything (writable, one at a time,
                 the same architecture on resume)
  checkpoint.py  orbax checkpoints of the train state, checked on restore
  restore.py     a run's saved config and parameters, for evaluation and fine-tunes

`layout` needs nothing but the standard library (the report reads runs without JAX).
"""
