"""BI-RADS features (tasks/birads-fea.yaml): ``python -m train_fea`` runs the shared training CLI on it."""
