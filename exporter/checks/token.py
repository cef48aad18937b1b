"""`token`: a real token refresh every run (a cached access token does not count)."""

from __future__ import annotations

from exporter.checks import Measurement, RunContext, TokenMeasurement


def check_token(ctx: RunContext) -> Measurement | None:
    ctx.token = ctx.auth.refresh()
    return TokenMeasurement(expires_at=ctx.token.expires_at)
