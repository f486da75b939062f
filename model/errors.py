"""The errors a user's input can raise, where nothing of ours is imported, so that any layer can raise and
catch them (the task file's, the kinds', the readers')."""


class ScoreError(ValueError):
    """Predictions or ground truth that cannot be scored; the message names the file."""


class TaskFileError(ValueError):
    """A task file (or a manifest's task section) that cannot be used; the message says where and why."""


class BundleError(ValueError):
    """A bundle (its manifest, a checkpoint, a weight file) that cannot be used; the message names the file."""
