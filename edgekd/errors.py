"""Errors a user can act on. Library code raises these; only the CLI turns them into exit codes."""


class EdgeKDError(Exception):
    """Base class: the message is one line that names the problem and what to do. Bad input: exit 2."""

    exit_code = 2


class CheckFailed(EdgeKDError):
    """The input was fine but a result failed its check (an artefact's verification, a budget): exit 1."""

    exit_code = 1


class RecipeError(EdgeKDError):
    """The recipe (YAML, schema or a --set override) is wrong."""


class DataError(EdgeKDError):
    """A dataset cannot be found or read."""


class ModelError(EdgeKDError):
    """A model name, its weights or a checkpoint is wrong."""


class RunDirError(EdgeKDError):
    """The run directory cannot be used (not writable, or it holds a run we must not overwrite)."""
