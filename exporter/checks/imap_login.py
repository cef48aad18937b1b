"""`imap_login`: TLS connect, AUTHENTICATE XOAUTH2, then EXAMINE of the inbox.

A login can succeed while the mailbox is unusable ("authenticated but not connected");
only the EXAMINE shows it, so it is part of this check. The server certificate's notAfter is
read from the handshake this check makes anyway.

When the inbox check is enabled, the inbox's unseen count is asked here, between the login and
the EXAMINE: `STATUS` of the selected mailbox is a client bug (Dovecot answers it with
`[CLIENTBUG]`), and asking it before the EXAMINE costs no extra round trip later. Its failure
is the inbox check's to report, unless it broke the connection (then it is this check's).
"""

from __future__ import annotations

from exporter.checks import RunContext, TlsMeasurement
from exporter.failures import CheckFailed
from exporter.imap import ImapSession
from exporter.tlsinfo import not_after_der


def check_imap_login(ctx: RunContext) -> None:
    assert ctx.token is not None, "the token check runs first"
    mailbox = ctx.mailbox
    ctx.imap = ImapSession.connect(
        mailbox.imap.host, mailbox.imap.port, ctx.tls, ctx.socket_timeout()
    )
    ctx.aborters.append(ctx.imap.abort)
    certificate = ctx.imap.peer_certificate()
    if certificate is not None:
        ctx.record(TlsMeasurement("imap", not_after_der(certificate)))
    ctx.imap.login(mailbox.username, ctx.token.access_token)
    if "inbox" in mailbox.checks:
        try:
            ctx.inbox_unseen = ctx.imap.unseen(mailbox.folders.inbox)
        except CheckFailed as err:
            if ctx.imap.broken is not None:
                raise
            ctx.inbox_unseen_failure = err  # a NO/BAD: EXAMINE decides this check
    ctx.inbox_status = ctx.imap.examine(mailbox.folders.inbox)
