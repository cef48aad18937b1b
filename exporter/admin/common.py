"""What the admin commands share: signing in and opening a session, exit codes, formatting."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from exporter.admin.imap_session import AdminImapSession
from exporter.auth import MailboxAuth, tls_context
from exporter.config import Config, MailboxConfig
from exporter.failures import CheckFailed, Failure, pasteable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The admin asked for something that cannot be done as asked (exit 2, nothing changed)."""


@contextlib.contextmanager
def admin_session(config: Config, mailbox: MailboxConfig) -> Iterator[AdminImapSession]:
    """A token refresh, then an IMAP session signed in with it; LOGOUT at the end.

    Raises CheckFailed (with the step in its message) like the checks do.
    """
    token = MailboxAuth(mailbox, config.state_dir).refresh()
    session = AdminImapSession.connect(
        mailbox.imap.host, mailbox.imap.port, tls_context(mailbox.ca_file), mailbox.timeout
    )
    try:
        session.login(mailbox.username, token.access_token)
        yield session
    finally:
        session.logout()


def report_failure(
    err: CheckFailed, command: str, stderr: TextIO, config: Config, mailbox: MailboxConfig
) -> int:
    """The failure and its hint, the hint's commands completed with the config and mailbox in
    use so that they can be pasted."""
    failure: Failure = err.failure
    code = f" {failure.code}" if failure.code else ""
    hint = pasteable(failure.remediation, config.path, mailbox.name)
    stderr.write(f"{command}: failed: {failure.reason}{code}: {failure.message}\nhint: {hint}\n")
    return EXIT_FAILED


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns; the last column is not padded."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def write_json(document: dict[str, Any], stdout: TextIO) -> None:
    stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
