"""Operational errors: what an operator can fix (settings, inputs, outputs, services, the recovery store).

Each says what is wrong and where, in one line, and the command line reports it without a
traceback (exit 2); any other exception is a bug and is reported with its traceback. The
classes keep the built-in base the same problems raised before (``ValueError``,
``FileNotFoundError``), so callers that caught those still do.
"""

from __future__ import annotations


class NudgeflowError(Exception):
    """A problem with what the engine was given or connects to, not with the engine."""


class ConfigurationError(NudgeflowError, ValueError):
    """Bad settings, command-line options, config file, rule file or model file."""


class InputError(NudgeflowError, ValueError):
    """A recording that cannot be read (not gzip data, not the expected format, unreadable)."""


class RecordingNotFound(InputError, FileNotFoundError):
    """A recording that does not exist (or is not a file)."""


class OutputError(NudgeflowError, ValueError):
    """An output folder that cannot be used or written."""


class ServiceError(NudgeflowError, ValueError):
    """Kafka or Redis unreachable, refusing the credentials, or not accepting what the engine writes."""


class RecoveryStoreError(NudgeflowError, ValueError):
    """A recovery store that cannot be used: not trusted, not empty where a new one is needed, or of
    another snapshot format."""
