"""One exception root; the CLI's main() is the only place that catches it broadly."""

from __future__ import annotations


class ExporterError(Exception):
    """Base of every error the exporter raises on purpose."""


class ConfigError(ExporterError):
    """The configuration is invalid; `problems` holds one line per problem, in file order.

    Each problem reads `FILE:LINE: KEY: PROBLEM` (LINE is 1-based; KEY is the dotted path
    such as `mailboxes[1].auth.flow`).
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SecretError(ExporterError):
    """A secret could not be read (missing file, unset variable, unsafe permissions)."""


class StateError(ExporterError):
    """The state directory or a file in it cannot be used."""
