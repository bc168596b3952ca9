"""The errors a user can cause and fix (bad config, data, model name, run folder, an output location that
is full or read-only); the CLI prints them as one line and exits 2. Anything else is a bug and keeps its traceback."""

from sentitune.config import ConfigError
from sentitune.data import DataError
from sentitune.models import ModelNotAvailable
from sentitune.results import OutputNotWritable, RunFolderError
from sentitune.training import TrainingError

USER_ERRORS = (ConfigError, DataError, ModelNotAvailable, RunFolderError, TrainingError, OutputNotWritable)
