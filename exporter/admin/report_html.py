"""The Junk review as one self-contained HTML page: open it in a browser or mail it on.

No script, no external resource (a Content-Security-Policy forbids any), styles inline on the
elements so that mail clients which drop <style> blocks keep them, and every value from a
message escaped: a subject is attacker-controlled text.
"""

from __future__ import annotations

import os
from collections import Counter
from html import escape

from exporter.admin.common import human_size, iso
from exporter.admin.junk_listing import JunkListing, JunkMessage
from exporter.admin.verdicts import (
    ASSESSMENT_ORDER,
    CHECK,
    LIKELY_FALSE_POSITIVE,
    SFV_MEANING,
    SPAM,
)
from exporter.failures import command_line

_BADGE = {
    LIKELY_FALSE_POSITIVE: ("#1b5e20", "#e8f5e9", "#a5d6a7"),  # text, background, border
    CHECK: ("#7a4f01", "#fff8e1", "#ffe082"),
    SPAM: ("#8e1b1b", "#fdecea", "#f5b7b1"),
}
_RESULT_COLOUR = {"pass": "#1b5e20", "fail": "#8e1b1b", "softfail": "#7a4f01"}
_FONT = "font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif"
_CELL = "padding:6px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top;text-align:left"
_HEAD = _CELL + ";background:#f3f5f7;font-weight:600;font-size:12px;color:#3c4650"


def _e(value: object) -> str:
    return escape("-" if value is None else str(value), quote=True)


def _badge(label: str) -> str:
    fg, bg, border = _BADGE[label]
    return (
        f'<span style="display:inline-block;padding:1px 8px;border-radius:10px;'
        f"border:1px solid {border};background:{bg};color:{fg};font-weight:600;"
        f'white-space:nowrap">{_e(label)}</span>'
    )


def _result(name: str, value: str | None) -> str:
    colour = _RESULT_COLOUR.get(value or "", "#5f6b76")
    return f'<span style="color:{colour};white-space:nowrap">{_e(name)}&nbsp;{_e(value)}</span>'


def _row(m: JunkMessage) -> str:
    v = m.verdicts
    sfv_title = SFV_MEANING.get((v.sfv or "").upper(), "")
    reasons = "; ".join(m.assessment.reasons)
    cells = [
        f'<td style="{_CELL}">{_badge(m.assessment.label)}'
        f'<div style="font-size:11px;color:#5f6b76;margin-top:3px">{_e(reasons or "")}</div></td>',
        f'<td style="{_CELL};white-space:nowrap">{_e(iso(m.received))}</td>',
        f'<td style="{_CELL};word-break:break-word">{_e(m.sender.display)}</td>',
        f'<td style="{_CELL};word-break:break-word">{_e(m.subject)}</td>',
        f'<td style="{_CELL};white-space:nowrap;text-align:right">{_e(human_size(m.size))}</td>',
        f'<td style="{_CELL};text-align:right">{_e(v.scl)}</td>',
        f'<td style="{_CELL};text-align:right">{_e(v.bcl)}</td>',
        f'<td style="{_CELL}" title="{_e(sfv_title)}">{_e(v.sfv)}</td>',
        f'<td style="{_CELL};font-size:12px">{_result("SPF", v.spf)}<br>'
        f"{_result('DKIM', v.dkim)}<br>{_result('DMARC', v.dmarc)}</td>",
        f'<td style="{_CELL};text-align:right;color:#5f6b76">{m.uid}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def render_report(listing: JunkListing, config_file: str | os.PathLike[str] | None = None) -> str:
    """The page; its rescue command carries `config_file` (the --config.file in use)."""
    counts = Counter(m.assessment.label for m in listing.messages)
    summary = " &middot; ".join(
        f"{_badge(label)}&nbsp;{counts.get(label, 0)}" for label in ASSESSMENT_ORDER
    )
    likely = [m.uid for m in listing.messages if m.assessment.label == LIKELY_FALSE_POSITIVE]
    rescue = f" --rescue {','.join(map(str, likely))} --yes"
    if config_file is not None:
        command = command_line("junk-review", config_file, listing.mailbox, rescue)
    else:  # a page rendered without a config at hand
        command = (
            "o365-mailbox-exporter junk-review --config.file=CONFIG "
            f"--mailbox {listing.mailbox}{rescue}"
        )
    rescue_hint = (
        f'<p style="margin:12px 0">To move the likely false positives back to the inbox '
        f'(after reading them):<br><code style="background:#f3f5f7;padding:2px 6px;'
        f'border-radius:4px;font-size:12px">{_e(command)}</code></p>'
        if likely
        else ""
    )
    headings = ["Verdict", "Received", "From", "Subject", "Size", "SCL", "BCL", "SFV",
                "Authentication", "UID"]  # fmt: skip
    head = "".join(f'<th style="{_HEAD}">{_e(h)}</th>' for h in headings)
    body = "".join(_row(m) for m in listing.messages) or (
        f'<tr><td colspan="{len(headings)}" style="{_CELL};color:#5f6b76">'
        "The Junk folder is empty.</td></tr>"
    )
    title = f"Junk review: {listing.mailbox}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
</head>
<body style="margin:0;padding:24px;background:#ffffff;color:#1f2933;{_FONT};font-size:14px">
<h1 style="font-size:20px;margin:0 0 4px 0">{_e(title)}</h1>
<p style="margin:0 0 12px 0;color:#5f6b76">Folder {_e(listing.folder)} &middot;
{len(listing.messages)} message(s) &middot; generated {_e(iso(listing.generated_at))}
&middot; likely false positives first</p>
<p style="margin:0 0 12px 0">{summary}</p>
{rescue_hint}
<table style="border-collapse:collapse;width:100%;font-size:13px">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<p style="margin-top:16px;font-size:12px;color:#5f6b76">SCL: spam confidence level
(-1 filtering skipped, 0-1 not spam, 5-6 spam, 7-9 high confidence spam). BCL: bulk complaint
level (0-9). SFV: the filter's verdict (hover for its meaning). A low SCL with passing DMARC,
or a sender that also writes to the inbox, points to real mail filtered by mistake.
Headers were read without marking anything read.</p>
</body>
</html>
"""
