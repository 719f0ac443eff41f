"""Errors a user can act on: each says what was wrong, where, and what to do."""

from __future__ import annotations


class MmsrarecError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(MmsrarecError):
    """A configuration key is unknown, mistyped or impossible."""


class DataError(MmsrarecError):
    """Input data is malformed. Names the file and, where known, the line or record."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 record: str | None = None, hint: str | None = None):
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f", line {line}"
            if record is not None:
                where += f", record {record}"
            where += ": "
        text = where + message
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.path, self.line, self.record = path, line, record


class ArtifactError(MmsrarecError):
    """A stage artifact is missing, corrupted or does not match its manifest."""
