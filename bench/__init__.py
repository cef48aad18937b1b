"""Benchmarks of o365-mailbox-exporter (not tests): `python -m bench.run [--quick]`."""
