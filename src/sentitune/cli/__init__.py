"""`sentitune <command>`: a thin layer over the Python API.

`main.py` builds the parser and dispatches; `commands/<command>.py` turns the parsed flags into one
API call and prints the result; `options.py` holds the flag groups several commands share. Nothing
below the CLI sees an argparse Namespace.

Example:
    >>> from sentitune.cli import main
    >>> main(["predict", "--model", "runs/sst2-lora", "a gorgeous , witty film"])  # doctest: +SKIP
    0
"""

from sentitune.cli.main import EXIT_USER_ERROR, build_parser, main
from sentitune.cli.options import config_from_args


__all__ = ["EXIT_USER_ERROR", "build_parser", "config_from_args", "main"]
