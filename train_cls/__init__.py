"""BI-RADS category (tasks/birads-cla.yaml): ``python -m train_cls`` runs the shared training CLI on it."""
