"""pytest plugin: session-wide fake Entra ID and Dovecot.

Enable with ``pytest_plugins = ["tests.testbed.fixtures"]`` in the top-level conftest.

* ``ca`` - a ``trustme.CA`` for every TLS server of the bed.
* ``entra`` - a started :class:`FakeEntra` (session). Before each test that uses it (directly
  or through another fixture) its counters and request log are reset; after the test its
  injected errors and behaviour switches are restored. Users and apps stay.
* ``entra_clean`` - the same object, named for tests that want to say so.
* ``dovecot`` - a started :class:`Dovecot` (session) validating tokens against ``entra``, with
  its SMTP submission service on ``dovecot.submission_port`` relaying to ``dovecot.sink``.
* ``exchange_smtp`` - an :class:`ExchangeLikeSmtp` (session) answering like smtp.office365.com.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trustme

from .dovecot import Dovecot
from .entra import FakeEntra, start_fake_entra
from .smtp import ExchangeLikeSmtp

__all__ = ["ca", "dovecot", "entra", "entra_clean", "exchange_smtp"]


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def entra(ca: trustme.CA) -> Iterator[FakeEntra]:
    hosts = os.environ.get("TESTBED_ENTRA_HOSTS")
    fake = start_fake_entra(ca, hosts.split(",") if hosts else None)
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(autouse=True)
def _testbed_entra_reset(request: pytest.FixtureRequest) -> Iterator[None]:
    if "entra" not in request.fixturenames:
        yield
        return
    fake: FakeEntra = request.getfixturevalue("entra")
    fake.reset_counters()
    yield
    fake.reset_switches()


@pytest.fixture
def entra_clean(entra: FakeEntra) -> FakeEntra:
    return entra


@pytest.fixture(scope="session")
def dovecot(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, entra: FakeEntra
) -> Iterator[Dovecot]:
    server = Dovecot(tmp_path_factory.mktemp("dovecot"), ca, entra, submission=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def exchange_smtp(ca: trustme.CA, entra: FakeEntra) -> Iterator[ExchangeLikeSmtp]:
    server = ExchangeLikeSmtp(ca, entra).start()
    try:
        yield server
    finally:
        server.stop()
