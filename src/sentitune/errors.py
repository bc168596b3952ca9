"""Every error a user can cause and fix (bad config, data, model name, run folder, an output location
that is full or read-only, a precision the hardware lacks); the CLI prints them as one line and exits 2.
Anything else is a bug and keeps its traceback. Imports nothing from the package, so any layer can
raise these and the CLI can catch them without loading training or torch."""


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field."""


class DataError(ValueError):
    """Input data is unusable; the message names the file, line, column and value."""


class ModelNotAvailable(RuntimeError):
    """The model name cannot be turned into weights on this machine."""


class RunFolderError(ValueError):
    """A run folder is missing, unfinished or damaged."""


class OutputNotWritable(RuntimeError):
    """An output cannot be written: disk full, read-only file system or no permission. The message
    names the path; the user fixes it by freeing space or picking another output folder."""


class OutputInUse(OutputNotWritable):
    """Another process holds the writer lock of this output; the message names its PID."""


class TrainingError(RuntimeError):
    """Training could not finish; the message says why and what to try."""


class PrecisionError(ValueError):
    """A precision this hardware cannot run well; the message says what to use instead."""


USER_ERRORS = (
    ConfigError,
    DataError,
    ModelNotAvailable,
    RunFolderError,
    TrainingError,
    OutputNotWritable,
    PrecisionError,
)
