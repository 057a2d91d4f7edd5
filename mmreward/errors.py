"""Exceptions raised by the reward core. Each names the offending input."""


class RewardError(ValueError):
    """Bad input to a reward (image shape, value range, prompts) or a non-finite reward."""


class RewardSpecError(ValueError):
    """A reward spec string that cannot be parsed or names an unknown family."""


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded: missing local path, or a hub id that cannot be fetched."""
