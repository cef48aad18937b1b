"""`token`: a real token refresh every run (a cached access token does not count).

The credential's own expiry (certificate notAfter, or the configured client-secret expiry) is
recorded first, so it is exposed even when the refresh fails — which is when it matters.
"""

from __future__ import annotations

from datetime import UTC, datetime, time

from exporter.checks import CredentialMeasurement, RunContext, TokenMeasurement
from exporter.config import read_secret
from exporter.errors import SecretError
from exporter.tlsinfo import not_after_pem


def check_token(ctx: RunContext) -> None:
    auth = ctx.mailbox.auth
    if auth.client_secret_expires is not None:
        expires = datetime.combine(auth.client_secret_expires, time(0, 0), tzinfo=UTC)
        ctx.record(CredentialMeasurement("client_secret", expires.timestamp()))
    if auth.flow == "client_certificate":
        try:
            not_after = not_after_pem(read_secret(auth))
        except (SecretError, ValueError):
            not_after = None  # the refresh below reports the unreadable certificate
        if not_after is not None:
            ctx.record(CredentialMeasurement("certificate", not_after))
    ctx.token = ctx.auth.refresh(timeout=ctx.socket_timeout())
    ctx.record(TokenMeasurement(expires_at=ctx.token.expires_at))
