"""Core of the submission harness for image classification.

Everything every task shares lives here once: the task definition (``task``, read from a task file) and
its kind (``kinds``: single-label or multi-label), data readers (``readers``), image loading, the network
factory, the self-describing bundle format, the metric, decision rules, prediction on a folder
(``runner``, what run.py does) and the training engine (``model.training``). ``run.py``, ``train.py``,
``train_cls`` and ``train_fea`` are thin layers over it; the BI-RADS competition lives in tasks/*.yaml.
"""
