"""The slicer's exception tree. User mistakes say what was wrong and what would be accepted."""


class MLFSError(Exception):
    """Base of every error the slicer raises on purpose."""


class ConfigError(MLFSError, ValueError):
    """A subnet config, search space or setting is invalid. The message names the field and the allowed values."""


class TeacherError(MLFSError):
    """A teacher is unknown, not prepared, or could not be prepared."""


class CheckpointError(MLFSError):
    """A checkpoint folder or weight file is missing, corrupt, or does not match the model it is loaded into."""


class AdapterMismatchError(CheckpointError):
    """An adapter stack was made for another base model, rank, target list or shape."""


class MergeError(MLFSError):
    """Merging adapters into base weights produced non-finite values."""


class ExportError(MLFSError):
    """An export failed, or its validation against PyTorch or its quantisation quality gate did not pass."""
