"""Small misbehaving servers for the fault-injection tests, used only where the real peer
(Dovecot, the FakeEntra) cannot misbehave on demand: an IMAP proxy in front of Dovecot, an
HTTPS proxy in front of the FakeEntra, a loopback DNS server, and a probe of the exporter
process's threads, file descriptors and memory."""

from tests.faults.authority import AuthorityFault, AuthorityFaultProxy
from tests.faults.dns import FakeDns, in_namespace
from tests.faults.imap_proxy import ImapFault, ImapFaultProxy
from tests.faults.process import ProcessStats, process_stats

__all__ = [
    "AuthorityFault",
    "AuthorityFaultProxy",
    "FakeDns",
    "ImapFault",
    "ImapFaultProxy",
    "ProcessStats",
    "in_namespace",
    "process_stats",
]
