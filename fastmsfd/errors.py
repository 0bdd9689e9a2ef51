"""Exceptions raised by fastmsfd. Every message names the file (when there is one) and the problem."""


class FastMSFDError(Exception):
    """Base class for all fastmsfd errors."""


class ImageDecodeError(FastMSFDError, ValueError):
    """An image file could not be read or decoded."""


class DataError(FastMSFDError, ValueError):
    """A data source (folder, dataset layout, tensor) is missing, empty or malformed."""


class CheckpointError(FastMSFDError, ValueError):
    """A checkpoint file is missing, corrupt, of an incompatible version or for another model."""


class WeightsNotFoundError(FastMSFDError, FileNotFoundError):
    """Pretrained weights are not available offline; the message says what to fetch and where to put it."""


class TrainingDivergedError(FastMSFDError, RuntimeError):
    """The distillation loss became NaN/inf or exploded."""
