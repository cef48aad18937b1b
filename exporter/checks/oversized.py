"""`oversized`: inbox messages larger than `oversized_bytes`, found server-side (SEARCH LARGER)."""

from __future__ import annotations

from exporter.checks import OversizedMeasurement, RunContext


def check_oversized(ctx: RunContext) -> None:
    session = ctx.session()
    inbox = ctx.mailbox.folders.inbox
    if session.selected != inbox:
        ctx.inbox_status = session.examine(inbox)
    found = session.oversized(ctx.mailbox.oversized_bytes)
    ctx.record(OversizedMeasurement(folder="inbox", count=found.count, largest_bytes=found.largest))
