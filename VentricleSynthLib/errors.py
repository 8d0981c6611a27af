"""Typed exceptions for user-facing errors.

Every error a user can cause (bad file, bad request) is a `VentricleSynthError`; the CLI prints
it as one `error: ...` line and exits non-zero without a traceback. Anything else is a bug.
"""


class VentricleSynthError(Exception):
    """Base class of all errors caused by the user's input or request."""

    exit_code = 2


class InvalidImageError(VentricleSynthError):
    """A file is not a readable, finite, non-empty 3-D image."""


class LabelSchemaError(VentricleSynthError):
    """A label map holds values that the schema (or the chosen mapping) does not know."""


class GeometryMismatchError(VentricleSynthError):
    """Two volumes that must share a voxel grid do not."""


class DatasetError(VentricleSynthError):
    """A dataset folder is missing files or pairs."""


class ConfigError(VentricleSynthError):
    """A profile/config file or option is invalid."""


class RequestError(VentricleSynthError):
    """A request the models or the command cannot honour (volume, steps, guidance, device, count)."""


class OutputError(VentricleSynthError):
    """An output location cannot be written."""
