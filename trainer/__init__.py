"""Stage two: train students from a soft-label store at any temperature. No teacher runs here.

Entry points: ``trainer.train.train`` (one run), ``trainer.train.train_sweep`` (one run per
temperature) and ``trainer.compare.compare`` (the `make distill` experiment). The only thing
read from stage one is the store, through ``softlabels.store.open_store``.
"""
