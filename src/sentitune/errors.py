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


# ---- helpers for messages that quote what the user gave ------------------------------------------

QUOTE_LIMIT = 80
"""Characters of a user value an error message quotes at most; the rest is summarised by its length."""


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` cut to `limit` characters, so an error line stays one short line whatever the
    user passed (a megabyte string, a structure expanded from YAML aliases).

    Example:
        >>> quote("x" * 500, 12)
        "'xxxxxxxxxx... (502 characters)"
    """
    try:
        text = repr(value)
    except RecursionError:  # a self-referencing structure
        return f"<{type(value).__name__} nested too deeply to show>"
    text = text.replace("\n", "\\n")
    if len(text) <= limit:
        return text
    return f"{text[: max(1, limit - 1)]}... ({len(text)} characters)"


def read_text(path, error: type[Exception], what: str = "file") -> str:
    """The UTF-8 text of a user-supplied file, or one `error` line naming the path: missing, a folder,
    unreadable, or not UTF-8 (with the line, column and bytes)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(
            f"{path}: line {line}, column {column}: bytes {data[exc.start : exc.end]!r} are not UTF-8; "
            "re-save the file as UTF-8"
        ) from None
