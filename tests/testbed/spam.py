"""Spam verdict headers as Exchange Online Protection writes them, for Junk folder tests.

Shapes follow real messages delivered by Exchange Online (Microsoft's "Anti-spam message
headers" page): `X-Forefront-Antispam-Report` with CIP/CTRY/LANG/SCL/SRV/IPV/SFV/H/PTR/CAT/
SFS/DIR, `X-Microsoft-Antispam` with BCL and ARA, `X-Microsoft-Antispam-Mailbox-Delivery` with
ucf/jmr/auth/dest/ENG/RF, and Exchange's `Authentication-Results` (no authserv-id, `compauth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .mail import make_message

__all__ = [
    "JunkSample",
    "authentication_results",
    "demo_junk_samples",
    "junk_message",
    "verdict_headers",
]


def _category(scl: int, bcl: int) -> str:
    if scl >= 7:
        return "HSPM"
    if scl >= 5:
        return "SPM"
    if bcl >= 7:
        return "BULK"
    return "NONE"


def authentication_results(
    domain: str, ip: str, *, spf: str = "pass", dkim: str = "pass", dmarc: str = "pass"
) -> str:
    spf_text = {
        "pass": f"spf=pass (sender IP is {ip}) smtp.mailfrom={domain}",
        "fail": f"spf=fail (sender IP is {ip}) smtp.mailfrom={domain}",
        "softfail": f"spf=softfail (sender IP is {ip}) smtp.mailfrom={domain}",
        "none": f"spf=none (sender IP is {ip}) smtp.mailfrom={domain}",
    }[spf]
    dkim_text = {
        "pass": f"dkim=pass (signature was verified) header.d={domain}",
        "fail": f"dkim=fail (body hash did not verify) header.d={domain}",
        "none": "dkim=none (message not signed) header.d=none",
    }[dkim]
    dmarc_text = {
        "pass": f"dmarc=pass action=none header.from={domain}",
        "bestguesspass": f"dmarc=bestguesspass action=none header.from={domain}",
        "fail": f"dmarc=fail action=quarantine header.from={domain}",
        "none": f"dmarc=none action=none header.from={domain}",
    }[dmarc]
    compauth = "pass reason=100" if dmarc in ("pass", "bestguesspass") else "fail reason=000"
    return f"{spf_text}; {dkim_text};{dmarc_text};compauth={compauth}"


def verdict_headers(
    *,
    scl: int,
    bcl: int = 0,
    sfv: str | None = None,
    dest: str = "J",
    domain: str = "customer.example",
    ip: str = "203.0.113.25",
    country: str = "DE",
    spf: str = "pass",
    dkim: str = "pass",
    dmarc: str = "pass",
    upstream_results: str | None = None,
) -> list[tuple[str, str]]:
    """The headers EOP adds, topmost first. `upstream_results` adds an older
    Authentication-Results below Exchange's (a forwarding hop's), which must not count."""
    verdict = sfv or ("SPM" if scl >= 5 else "NSPM")
    host = f"mail.{domain}"
    headers = [
        (
            "Authentication-Results",
            authentication_results(domain, ip, spf=spf, dkim=dkim, dmarc=dmarc),
        ),
        ("X-MS-Exchange-Organization-SCL", str(scl)),
        ("X-Microsoft-Antispam", f"BCL:{bcl};ARA:13230040|4636009|376014|1800799024;"),
        (
            "X-Forefront-Antispam-Report",
            f"CIP:{ip};CTRY:{country};LANG:en;SCL:{scl};SRV:;IPV:NLI;SFV:{verdict};H:{host};"
            f"PTR:{host};CAT:{_category(scl, bcl)};SFS:(13230040)(4636009)(376014)"
            "(1800799024);DIR:INB;",
        ),
        (
            "X-Microsoft-Antispam-Mailbox-Delivery",
            f"ucf:0;jmr:0;auth:0;dest:{dest};ENG:(910001)(944506478)(944626604)(920097)"
            f"(930097)(3100021)(140003);RF:{'JunkEmail' if dest == 'J' else 'Inbox'};",
        ),
    ]
    if upstream_results is not None:
        headers.append(("Authentication-Results", upstream_results))
    return headers


@dataclass(frozen=True)
class JunkSample:
    """One Junk message of a test and what the review must say about it."""

    subject: str
    sender: str
    received: datetime
    scl: int
    bcl: int = 0
    spf: str = "pass"
    dkim: str = "pass"
    dmarc: str = "pass"
    sfv: str | None = None
    size: int | None = None
    upstream_results: str | None = None

    @property
    def domain(self) -> str:
        return self.sender.rsplit("@", 1)[-1].rstrip(">").lower()

    def message(self) -> bytes:
        return junk_message(self)


def junk_message(sample: JunkSample) -> bytes:
    headers = verdict_headers(
        scl=sample.scl,
        bcl=sample.bcl,
        sfv=sample.sfv,
        domain=sample.domain,
        spf=sample.spf,
        dkim=sample.dkim,
        dmarc=sample.dmarc,
        upstream_results=sample.upstream_results,
    )
    return make_message(sample.subject, sample.sender, size=sample.size, headers=headers,
                        date=sample.received)  # fmt: skip


def demo_junk_samples(now: datetime, oldest_days: int = 3) -> list[JunkSample]:
    """A service desk's Junk folder as the weekly review finds it (the demo's; `junk-review`
    ranks them in this order): a customer's reply caught as spam (SCL 5, but DMARC passes and
    the sender's domain, fabrikam.example, writes to the inbox: the likely false positive), a
    supplier's notice with SCL 1 and passing DMARC, a bulk newsletter (BCL 8), and two spam
    messages failing authentication, the oldest `oldest_days` old."""
    return [
        JunkSample(
            subject="Re: [Ticket #4711] VPN still drops every hour",
            sender="Anna Berg <anna.berg@fabrikam.example>",
            received=now - timedelta(hours=6),
            scl=5,
            sfv="SPM",
        ),
        JunkSample(
            subject="Your order 88213 has shipped",
            sender="Northwind Orders <orders@northwind.example>",
            received=now - timedelta(days=1),
            scl=1,
            sfv="NSPM",
        ),
        JunkSample(
            subject="November deals: 40 % off all toner",
            sender="Deals <news@office-supplies-deals.example>",
            received=now - timedelta(days=2),
            scl=6,
            bcl=8,
            dmarc="bestguesspass",
            dkim="none",
        ),
        JunkSample(
            subject="Invoice 4711 overdue",
            sender="Billing <billing@invoice-portal.example>",
            received=now - timedelta(days=2, hours=3),
            scl=7,
            spf="softfail",
            dkim="none",
            dmarc="none",
        ),
        JunkSample(
            subject="You have won",
            sender="offers@prize-winner.example",
            received=now - timedelta(days=oldest_days),
            scl=9,
            spf="fail",
            dkim="fail",
            dmarc="fail",
        ),
    ]
