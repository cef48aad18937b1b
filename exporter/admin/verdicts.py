"""Exchange Online's spam verdict headers, and which Junk messages are likely real mail.

Read from a message's headers (see ../shared/FACTS.md, "Spam verdict headers"):

- `X-Forefront-Antispam-Report`: `SCL:` (-1 filtering skipped, 0-1 not spam, 5-6 spam,
  7-9 high confidence spam), `SFV:` (the filter's verdict), `CAT:` (the category);
- `X-Microsoft-Antispam`: `BCL:` (bulk complaint level, 0-9);
- `X-Microsoft-Antispam-Mailbox-Delivery`: `dest:J` (to Junk) / `dest:I` (to the inbox);
- `Authentication-Results`: `spf=`, `dkim=`, `dmarc=` (the topmost one: Exchange's own).

A Junk message with a low SCL and passing DMARC is the likely false positive; so is one from a
sender (or a non-freemail sender domain) that also writes to the inbox and passes DMARC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses

HEADER_FIELDS = (
    "From",
    "Subject",
    "X-Forefront-Antispam-Report",
    "X-Microsoft-Antispam",
    "X-Microsoft-Antispam-Mailbox-Delivery",
    "Authentication-Results",
)

# What the filter's SFV verdict means (Microsoft's "Anti-spam message headers").
SFV_MEANING = {
    "BLK": "blocked sender of the user",
    "NSPM": "not spam",
    "SFE": "safe sender of the user",
    "SKA": "allowed sender of the policy",
    "SKB": "blocked sender of the policy",
    "SKI": "intra-organization",
    "SKN": "not spam by a mail flow rule",
    "SKQ": "released from quarantine",
    "SKS": "spam by a mail flow rule",
    "SPM": "spam",
}

# Freemail domains: anyone can write from them, so only the full address counts as known.
FREEMAIL_DOMAINS = frozenset(
    {
        "aol.com",
        "gmail.com",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "googlemail.com",
        "hotmail.com",
        "icloud.com",
        "live.com",
        "mail.com",
        "me.com",
        "msn.com",
        "outlook.com",
        "proton.me",
        "protonmail.com",
        "web.de",
        "yahoo.com",
        "yandex.ru",
    }
)

LIKELY_FALSE_POSITIVE = "likely false positive"
CHECK = "check"
SPAM = "spam"
ASSESSMENT_ORDER = (LIKELY_FALSE_POSITIVE, CHECK, SPAM)

_AUTH_RESULT_RE = re.compile(r"(?:^|[\s;])(spf|dkim|dmarc|compauth)\s*=\s*([A-Za-z]+)", re.I)
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")  # terminal escape sequences
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_PARSER = BytesHeaderParser()


@dataclass(frozen=True, slots=True)
class Verdicts:
    scl: int | None = None
    bcl: int | None = None
    sfv: str | None = None
    cat: str | None = None
    dest: str | None = None  # J (Junk) or I (inbox)
    spf: str | None = None
    dkim: str | None = None
    dmarc: str | None = None


@dataclass(frozen=True, slots=True)
class Sender:
    display: str  # "Name <addr>" as a person reads it, control characters removed
    address: str  # lower-case
    domain: str  # lower-case, "" when there is no address


@dataclass(frozen=True, slots=True)
class Assessment:
    label: str  # LIKELY_FALSE_POSITIVE, CHECK or SPAM
    score: int  # orders messages within a label: higher = more likely real mail
    reasons: tuple[str, ...]


def parse_headers(raw: bytes) -> Message:
    return _PARSER.parsebytes(raw)


def clean(text: str) -> str:
    """One line of printable text: folded whitespace and control characters (a terminal escape
    sequence in a spam subject, say) become single spaces."""
    return " ".join(_CONTROL_RE.sub(" ", _ANSI_RE.sub("", text)).split())


def decoded(header: Message, name: str) -> str:
    """A header field decoded from RFC 2047; an undecodable one is shown as it came."""
    value = header.get(name)
    if value is None:
        return ""
    text = str(value)
    try:
        return clean(str(make_header(decode_header(text))))
    except (LookupError, UnicodeError, ValueError):
        return clean(text)


def sender_of(header: Message) -> Sender:
    display = decoded(header, "From")
    addresses = getaddresses([display]) if display else []
    address = addresses[0][1].strip().lower() if addresses else ""
    domain = address.rpartition("@")[2] if "@" in address else ""
    return Sender(display, address, domain)


def _fields(value: str) -> dict[str, str]:
    """`KEY:value;KEY:value;...` as in the Forefront and Antispam headers (keys upper-case)."""
    fields: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, item = part.partition(":")
        if sep and key.strip():
            fields.setdefault(key.strip().upper(), item.strip())
    return fields


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def verdicts_of(header: Message) -> Verdicts:
    forefront = _fields(" ".join(str(header.get("X-Forefront-Antispam-Report", "")).split()))
    antispam = _fields(" ".join(str(header.get("X-Microsoft-Antispam", "")).split()))
    delivery = _fields(
        " ".join(str(header.get("X-Microsoft-Antispam-Mailbox-Delivery", "")).split())
    )
    results: dict[str, str] = {}
    topmost = header.get_all("Authentication-Results") or []
    if topmost:
        for method, result in _AUTH_RESULT_RE.findall(" ".join(str(topmost[0]).split())):
            results.setdefault(method.lower(), result.lower())
    return Verdicts(
        scl=_int(forefront.get("SCL")),
        bcl=_int(antispam.get("BCL")),
        sfv=forefront.get("SFV") or None,
        cat=forefront.get("CAT") or None,
        dest=(delivery.get("DEST") or None),
        spf=results.get("spf"),
        dkim=results.get("dkim"),
        dmarc=results.get("dmarc"),
    )


@dataclass(frozen=True, slots=True)
class KnownSenders:
    """Who writes to the inbox: full addresses, and domains other than freemail ones."""

    addresses: frozenset[str]
    domains: frozenset[str]

    @classmethod
    def from_headers(cls, headers: list[bytes]) -> KnownSenders:
        addresses = {sender_of(parse_headers(raw)).address for raw in headers}
        addresses.discard("")
        domains = {a.rpartition("@")[2] for a in addresses} - FREEMAIL_DOMAINS
        return cls(frozenset(addresses), frozenset(domains))

    def knows(self, sender: Sender) -> str | None:
        """Why the sender counts as known ("sender" / "sender domain"), None when it does not."""
        if sender.address and sender.address in self.addresses:
            return "sender seen in the inbox"
        if sender.domain and sender.domain in self.domains:
            return "sender domain seen in the inbox"
        return None


def assess(verdicts: Verdicts, known: str | None) -> Assessment:
    """Label and score a Junk message; the reasons say why, in the admin's words."""
    score = 0
    reasons: list[str] = []
    scl, dmarc = verdicts.scl, verdicts.dmarc
    low_scl = scl is not None and scl <= 1
    if low_scl:
        score += 2
        reasons.append(f"SCL {scl} (not spam)" if scl != -1 else "SCL -1 (filtering skipped)")
    elif scl is not None and scl >= 7:
        score -= 1
        reasons.append(f"SCL {scl} (high confidence spam)")
    elif scl is not None and scl >= 5:
        reasons.append(f"SCL {scl} (spam)")
    elif scl is not None:
        score += 1
        reasons.append(f"SCL {scl}")
    if dmarc == "pass":
        score += 2
        reasons.append("DMARC pass")
    elif dmarc == "bestguesspass":
        score += 1
        reasons.append("DMARC best-guess pass")
    elif dmarc in ("fail", "permerror"):
        score -= 2
        reasons.append(f"DMARC {dmarc}")
    # A known sender failing DMARC is someone pretending to be them: no reason to look twice.
    spoofed = dmarc in ("fail", "permerror")
    if known is not None and spoofed:
        reasons.append(f"{known}, but DMARC {dmarc}: spoofed?")
        known = None
    elif known is not None:
        score += 2
        reasons.append(known)
    for method, result in (("SPF", verdicts.spf), ("DKIM", verdicts.dkim)):
        if result == "pass":
            score += 1
        elif result in ("fail", "permerror"):
            score -= 1
            reasons.append(f"{method} {result}")
    if verdicts.bcl is not None and verdicts.bcl >= 7:
        score -= 1
        reasons.append(f"bulk (BCL {verdicts.bcl})")
    dmarc_ok = dmarc in ("pass", "bestguesspass")
    high_scl = scl is not None and scl >= 7
    if (low_scl and dmarc == "pass") or (known is not None and dmarc_ok and not high_scl):
        label = LIKELY_FALSE_POSITIVE
    elif low_scl or dmarc_ok or known is not None:
        label = CHECK
    else:
        label = SPAM
    return Assessment(label, score, tuple(reasons))
