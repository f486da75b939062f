"""Four-feature training: the task's defaults and masked multi-task loss; the engine lives in model.training."""
