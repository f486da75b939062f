"""BI-RADS 6-class training: the task's defaults and loss; the engine lives in model.training."""
