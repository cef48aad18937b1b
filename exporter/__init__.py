"""o365-mailbox-exporter: a Microsoft 365 service-desk mailbox broke? Know before customers do."""

__version__ = "0.1.0"
