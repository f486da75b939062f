"""Core of the BI-RADS submission harness.

Everything both tasks share lives here once: image loading, dataset readers, the network factory,
the self-describing bundle format, the competition metric, the decision rules, prediction on a folder
and the training engine (``model.training``). ``run.py``, ``train_cls`` and ``train_fea`` are thin
layers over it.
"""
