"""Exceptions for mistakes in the user's input. Each names the offending file, line, key or argument.

Every command catches :class:`UserError` and prints its message as one line (``--debug`` shows the traceback);
any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input that the user can fix; the message says where and what to do."""


class RewardError(UserError, ValueError):
    """Bad input to a reward (image shape, value range, prompts) or a non-finite reward."""


class RewardSpecError(UserError, ValueError):
    """A reward spec string that cannot be parsed or names an unknown family."""


class ModelLoadError(UserError, RuntimeError, ValueError):
    """A model that cannot be loaded: missing local path, or a hub id that cannot be fetched."""


class InputFileError(UserError, ValueError):
    """An input file that is missing or cannot be read: the message names the file (and the line)."""
