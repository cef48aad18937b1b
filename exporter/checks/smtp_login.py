"""`smtp_login`: STARTTLS, AUTH XOAUTH2 with the mailbox's token, QUIT. Never sends a message."""

from __future__ import annotations

from exporter.checks import RunContext, TlsMeasurement
from exporter.smtp import SmtpSession
from exporter.tlsinfo import not_after_der


def check_smtp_login(ctx: RunContext) -> None:
    assert ctx.token is not None, "the token check runs first"
    mailbox = ctx.mailbox
    session = SmtpSession(mailbox.smtp.host, mailbox.smtp.port, ctx.tls, ctx.socket_timeout())
    ctx.aborters.append(session.abort)
    try:
        certificate = session.starttls()
        if certificate is not None:
            ctx.record(TlsMeasurement("smtp", not_after_der(certificate)))
        session.login(mailbox.username, ctx.token.access_token)
    finally:
        session.quit()
