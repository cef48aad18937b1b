"""Bad input, generated: whatever a config file, a duration, a size, an IMAP server's answer
or an ESM properties file holds, the exporter answers with a clear error and never a traceback.

Properties (hypothesis):
* `load_config` returns a Config or raises ConfigError whose every line starts `FILE:`;
* `parse_duration` / `parse_size` return a non-negative number or raise ValueError naming the
  input; valid values round-trip;
* `ImapSession.oldest_internaldate` / `oversized` over any FETCH or SEARCH answer (a real
  Dovecot session whose answers the fault proxy replaces) return a value or raise CheckFailed
  with a contract reason; `imap.classify` maps any exception text to a reason, bounded;
* `import-esm` over any properties file exits 0 with valid YAML or 2 with `FILE:` lines, and
  never copies a password.
"""

from __future__ import annotations

import io
import ssl
import string
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter.config import Config, load_config, parse_duration, parse_size
from exporter.errors import ConfigError
from exporter.failures import REASONS, CheckFailed
from exporter.imap import ImapSession, classify
from tests.content import seed_standard
from tests.faults import ImapFaultProxy

# No example database: nothing is written into the working tree.
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


# --- config files --------------------------------------------------------------------------

KEYS = ["state_dir", "defaults", "mailboxes", "name", "username", "tenant_id", "client_id",
        "auth", "flow", "password_file", "password_env", "client_secret_file",
        "client_secret_env", "certificate_file", "client_secret_expires", "scopes",
        "authority_host", "imap", "smtp", "host", "port", "ca_file", "folders", "inbox", "junk",
        "sent", "checks", "interval", "timeout", "oversized_bytes", "bogus"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
    st.text(max_size=30), st.sampled_from(
        ["password", "device_code", "client_secret", "client_certificate", "60s", "1h30m",
         "500ms", "0", "25MiB", "1GB", "-1", "9" * 400 + "y", "9" * 5000, "300y", "1y",
         "52w", "token", "junk",
         "https://login.microsoftonline.com", "https://", "ftp://x", "outlook.office365.com",
         "b921b89c-a960-4187-9872-28191e34a8f3", "contoso.com", "2027-06-30", "2027-13-40",
         "INBOX", "desk@contoso.com", "[", "{", "*", "&a", "!!python/object:os.system", "~"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner,
                                                                 max_size=6),
    max_leaves=25,
)


def _valid_document(secret: Path) -> dict[str, Any]:
    return {
        "state_dir": "./state",
        "defaults": {"interval": "60s", "timeout": "30s", "oversized_bytes": "25MiB"},
        "mailboxes": [{
            "name": "servicedesk", "username": "servicedesk@contoso.com",
            "tenant_id": "b921b89c-a960-4187-9872-28191e34a8f3",
            "client_id": "46a662fb-0fed-4f72-a212-95216e5b0f28",
            "auth": {"flow": "password", "password_file": str(secret)},
            "checks": ["token", "imap_login", "inbox", "oversized", "junk"],
        }],
    }


def _mutate(document: Any, path: list[Any], value: Any) -> Any:
    """`document` with the node at `path` (indices taken modulo, as far as they reach)
    replaced by `value`."""
    if not path:
        return value
    if isinstance(document, dict) and document:
        key = sorted(document, key=str)[path[0] % len(document)]
        return {**document, key: _mutate(document[key], path[1:], value)}
    if isinstance(document, list) and document:
        index = path[0] % len(document)
        return [*document[:index], _mutate(document[index], path[1:], value), *document[index + 1:]]
    return value


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz-config")
    secret = directory / "desk.password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    return directory


def _assert_loads_or_explains(path: Path) -> None:
    try:
        config = load_config(path)
    except ConfigError as err:
        assert err.problems
        for problem in err.problems:
            assert problem.startswith(f"{path}:"), problem
            assert "Traceback" not in problem and "\n" not in problem, problem
    else:
        assert isinstance(config, Config)
        for mailbox in config.mailboxes:  # the scheduler and the watchdog can wait that long
            assert 0 < mailbox.timeout <= mailbox.interval < threading.TIMEOUT_MAX
            assert mailbox.oversized_bytes >= 0


@FUZZ
@given(text=st.text(max_size=400) | st.binary(max_size=400).map(
    lambda b: b.decode("latin-1")))
@example(text="mailboxes: [" * 2000)
@example(text="a: &x [*x]")
@example(text="defaults:\n  interval: " + "9" * 400 + "y\nmailboxes: []\n")
def test_config_text_of_any_kind(text: str, config_dir: Path) -> None:
    path = config_dir / f"{uuid.uuid4().hex}.yml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _assert_loads_or_explains(path)


@FUZZ
@given(document=VALUES)
def test_config_documents_of_any_shape(document: Any, config_dir: Path) -> None:
    path = config_dir / f"{uuid.uuid4().hex}.yml"
    path.write_text(yaml.safe_dump(document))
    _assert_loads_or_explains(path)


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=5), value=VALUES)
def test_config_valid_but_one_value(path: list[int], value: Any, config_dir: Path) -> None:
    document = _mutate(_valid_document(config_dir / "desk.password"), path, value)
    target = config_dir / f"{uuid.uuid4().hex}.yml"
    target.write_text(yaml.safe_dump(document))
    _assert_loads_or_explains(target)


def test_the_mutation_base_is_valid(config_dir: Path) -> None:
    path = config_dir / "base.yml"
    path.write_text(yaml.safe_dump(_valid_document(config_dir / "desk.password")))
    assert load_config(path).mailboxes[0].name == "servicedesk"


# --- durations and sizes -------------------------------------------------------------------

UNITS = (("y", 365 * 86400), ("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1),
         ("ms", 0.001))


@FUZZ
@given(text=st.text(max_size=40) | st.text(alphabet="0123456789ywdhms ", max_size=40))
@example(text="9" * 400 + "y")
@example(text="9" * 5000 + "s")
def test_parse_duration_of_any_text(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        assert text[:20] in str(err) or "invalid duration" in str(err), err
    else:
        assert seconds >= 0


@FUZZ
@given(counts=st.lists(st.one_of(st.none(), st.integers(0, 400)), min_size=7, max_size=7))
def test_parse_duration_round_trips(counts: list[int | None]) -> None:
    if all(c is None for c in counts):
        counts[5] = 1
    text = "".join(f"{c}{unit}" for c, (unit, _) in zip(counts, UNITS, strict=True)
                   if c is not None)
    expected = sum(c * factor for c, (_, factor) in zip(counts, UNITS, strict=True)
                   if c is not None)
    if expected > 365 * 86400:  # a monitor has no use for longer waits
        with pytest.raises(ValueError, match="longer than a year"):
            parse_duration(text)
    else:
        assert parse_duration(text) == pytest.approx(expected)


SIZE_UNITS = {"": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2,
              "GiB": 1024**3}


@FUZZ
@given(value=st.one_of(st.text(max_size=30), st.integers(-2**64, 2**64), st.none(),
                       st.booleans(), st.floats(), st.lists(st.integers(), max_size=2)))
@example(value="9" * 5000)
@example(value="9" * 5000 + "MiB")
def test_parse_size_of_any_value(value: Any) -> None:
    try:
        size = parse_size(value)
    except ValueError as err:
        assert "invalid size" in str(err), err
    else:
        assert isinstance(size, int) and size >= 0


@FUZZ
@given(number=st.integers(0, 10**12), unit=st.sampled_from(sorted(SIZE_UNITS)),
       case=st.sampled_from([str.lower, str.upper, str]), space=st.sampled_from(["", " "]))
def test_parse_size_round_trips(number: int, unit: str, case: Any, space: str) -> None:
    assert parse_size(f"{number}{space}{case(unit)}") == number * SIZE_UNITS[unit]
    assert parse_size(number) == number


# --- IMAP answers --------------------------------------------------------------------------

@dataclass
class ImapBench:
    proxy: ImapFaultProxy
    upn: str
    token: str = field(repr=False)  # falsifying examples are printed: keep tokens out of CI logs
    context: ssl.SSLContext = field(repr=False)


@pytest.fixture(scope="module")
def imap_bench(entra, dovecot, ca) -> Iterator[ImapBench]:  # type: ignore[no-untyped-def]
    upn = f"fuzz-{uuid.uuid4().hex[:8]}@contoso.onmicrosoft.com"
    entra.add_user(upn, "pw")
    dovecot.reset_mailbox(upn)
    seed_standard(dovecot, upn)
    proxy = ImapFaultProxy(ca, "127.0.0.1", dovecot.port).start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    try:
        yield ImapBench(proxy, upn, entra.mint_access_token(upn), context)
    finally:
        proxy.stop()


LINE = st.one_of(
    st.binary(max_size=80),
    st.text(alphabet=string.printable, max_size=80).map(str.encode),
    st.builds(lambda n, date: b"* %d FETCH (INTERNALDATE %s)" % (n, date),
              st.integers(-5, 10**12),
              st.one_of(st.just(b'"15-Sep-2026 08:30:00 +0000"'),
                        st.just(b'"15-Sep-2026 08:30:00"'),  # no zone
                        st.just(b"NIL"), st.just(b'"31-Feb-2026 25:61:61 +9999"'),
                        st.text(max_size=30).map(lambda t: b'"' + t.encode() + b'"'),
                        st.binary(max_size=30))),
    st.builds(lambda n, size: b"* %d FETCH (UID %d RFC822.SIZE %s)" % (n, n, size),
              st.integers(0, 10**6), st.one_of(st.integers(-10, 10**20).map(
                  lambda i: str(i).encode()), st.binary(max_size=12))),
    st.builds(lambda items: b"* SEARCH " + b" ".join(items),
              st.lists(st.one_of(st.integers(-3, 10**9).map(lambda i: str(i).encode()),
                                 st.binary(max_size=6)), max_size=6)),
    st.just(b"* 1 FETCH (INTERNALDATE {5}\r\n12345)"),
    st.just(b"* BYE going away"),
)


def _replace_untagged(lines: list[bytes]) -> Any:
    """A rewrite for the proxy: the answer's untagged lines replaced, its tagged line kept."""

    def rewrite(answer: bytes) -> bytes:
        tagged = answer.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        return b"".join(line.replace(b"\r\n", b"") + b"\r\n" for line in lines) + tagged + b"\r\n"

    return rewrite


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(["FETCH", "SEARCH"]), method=st.sampled_from(["oldest", "sizes"]),
       lines=st.lists(LINE, max_size=4))
@example(command="FETCH", method="oldest",
         lines=[b'* 1 FETCH (INTERNALDATE "15-Sep-2026 08:30:00")'])
@example(command="FETCH", method="oldest", lines=[b"* 1 FETCH (INTERNALDATE NIL)"])
@example(command="FETCH", method="sizes", lines=[b"* 1 FETCH (UID 1 RFC822.SIZE x)"])
def test_imap_answers_of_any_kind(imap_bench: ImapBench, command: str, method: str,
                                  lines: list[bytes]) -> None:
    bench = imap_bench
    bench.proxy.set_fault("rewrite", command=command, rewrite=_replace_untagged(lines))
    session = ImapSession.connect("127.0.0.1", bench.proxy.port, bench.context, 0.5)
    try:
        session.login(bench.upn, bench.token)
        status = session.examine("INBOX")
        assert status.messages == 4
        try:
            if method == "oldest":
                result: Any = session.oldest_internaldate(status.messages)
                assert result is None or isinstance(result, datetime)
            else:
                result = session.oversized(100_000)
                assert result.count >= 0
        except CheckFailed as err:
            assert err.failure.reason in {"protocol", "connection", "timeout"}, err.failure
            assert len(err.failure.message) < 500
    finally:
        session.logout()


def test_imap_answers_pass_through_unchanged(imap_bench: ImapBench) -> None:
    """The rewrite bench itself: with the answers kept, the real values come through."""
    bench = imap_bench
    bench.proxy.set_fault("rewrite", command="FETCH", rewrite=lambda answer: answer)
    session = ImapSession.connect("127.0.0.1", bench.proxy.port, bench.context, 2.0)
    try:
        session.login(bench.upn, bench.token)
        status = session.examine("INBOX")
        oldest = session.oldest_internaldate(status.messages)
        assert oldest is not None
        assert oldest.isoformat() == "2026-09-15T08:30:00+00:00"
        assert session.oversized(100_000).count == 2
    finally:
        session.logout()
        bench.proxy.set_fault("pass")


@FUZZ
@given(kind=st.sampled_from([OSError, TimeoutError, ValueError, KeyError, RuntimeError,
                             ssl.SSLError, UnicodeError]),
       text=st.text(max_size=3000), step=st.text(max_size=20))
def test_imap_classify_any_exception(kind: type[Exception], text: str, step: str) -> None:
    import imaplib

    for err in (kind(text), imaplib.IMAP4.error(text), imaplib.IMAP4.abort(text)):
        failure = classify(err, step).failure
        assert failure.reason in REASONS
        assert len(failure.message) <= len(step) + 400, failure.message


# --- ESM properties ------------------------------------------------------------------------

ESM_KEYS = ["mail.store.oauth.enabled", "mail.transport.oauth.enabled", "mail.oauth.enabled",
            "mail.oauth.authorize.endpoint", "mail.oauth.client.id", "mail.oauth.scopes",
            "mail.imap.host", "mail.imaps.host", "mail.imap.port", "mail.imaps.port",
            "mail.imap.user", "mail.smtp.host", "mail.smtp.port", "mail.smtp.user",
            "mail.user", "mail.password", "mail.imap.password", "other.key"]
ESM_VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from([
        "true", "false", "yes", "TRUE",
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize",
        "https://login.microsoftonline.com/{tenantID}/oauth2/v2.0/authorize",
        "https://login.microsoftonline.com/common/oauth2/authorize", "https://", "http://x:99999",
        "46a662fb-0fed-4f72-a212-95216e5b0f28", "{clientId}",
        "https://outlook.office365.com/IMAP.AccessAsUser.All,"
        "https://outlook.office365.com/SMTP.Send", "outlook.office365.com", "993", "-1",
        "99999999999999999999", "desk@contoso.com", "desk", "\\", "\\u12", "\\uZZZZ"]),
)
ESM_LINE = st.one_of(
    st.builds(lambda k, sep, v: f"{k}{sep}{v}", st.sampled_from(ESM_KEYS),
              st.sampled_from(["=", " = ", ":", " ", "\t"]), ESM_VALUES),
    st.text(max_size=60), st.sampled_from(["# comment", "! comment", "", "   \\", "key\\"]),
)


@FUZZ
@given(lines=st.lists(ESM_LINE, max_size=14), newline=st.sampled_from(["\n", "\r\n", "\r"]),
       canary=st.sampled_from(["Cnry-esm-pw-1", "p@ss word", "x"]))
def test_import_esm_of_any_properties(lines: list[str], newline: str, canary: str,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    from exporter.admin import esm_import

    directory = tmp_path_factory.getbasetemp()
    path = directory / f"esm-{uuid.uuid4().hex}.properties"
    lines = [*lines, f"mail.password = {canary}-secret"]
    path.write_text(newline.join(lines), encoding="utf-8", errors="surrogatepass")
    stdout, stderr = io.StringIO(), io.StringIO()
    code = esm_import.run(str(path), None, None, stdout, stderr)
    assert f"{canary}-secret" not in stdout.getvalue() + stderr.getvalue()
    if code == 0:
        assert isinstance(yaml.safe_load(stdout.getvalue()), (dict, list))
    else:
        assert code == 2
        for line in stderr.getvalue().splitlines():
            assert line.startswith((f"{path}:", "note:")), line
