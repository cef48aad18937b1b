"""`imap_login`: TLS connect, AUTHENTICATE XOAUTH2, then EXAMINE of the inbox.

A login can succeed while the mailbox is unusable ("authenticated but not connected");
only the EXAMINE shows it, so it is part of this check.
"""

from __future__ import annotations

from exporter.checks import Measurement, RunContext
from exporter.imap import ImapSession


def check_imap_login(ctx: RunContext) -> Measurement | None:
    assert ctx.token is not None, "the token check runs first"
    mailbox = ctx.mailbox
    ctx.imap = ImapSession.connect(mailbox.imap.host, mailbox.imap.port, ctx.tls, mailbox.timeout)
    ctx.imap.login(mailbox.username, ctx.token.access_token)
    ctx.inbox_status = ctx.imap.examine(mailbox.folders.inbox)
    return None
