"""The second reference of the benchmark: the twenty-line script an admin would write instead
of this exporter. msal + imapclient, no persisted cache, no deadlines, no metrics:

    python -m bench.naive CONFIG.yml MAILBOX INTERVAL_SECONDS

Every interval: a refresh-token grant (`acquire_token_silent(force_refresh=True)`; the first
time a password sign-in), then IMAP: AUTHENTICATE XOAUTH2, EXAMINE INBOX, STATUS INBOX
(UNSEEN), SEARCH LARGER, FETCH 1 (INTERNALDATE), EXAMINE Junk, LOGOUT. Reads the mailbox's
settings from an exporter config written by `bench.bed` (same authority, CA and Dovecot).
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from pathlib import Path

import msal
import yaml
from imapclient import IMAPClient


def main(argv: list[str]) -> int:
    config_path, name, interval = Path(argv[0]), argv[1], float(argv[2])
    document = yaml.safe_load(config_path.read_text())
    defaults = document["defaults"]
    mailbox = next(m for m in document["mailboxes"] if m["name"] == name)
    password = Path(mailbox["auth"]["password_file"]).read_text().strip()
    ca_file = defaults["ca_file"]
    os.environ["REQUESTS_CA_BUNDLE"] = ca_file  # wins over msal's `verify` in requests
    scopes = ["https://outlook.office365.com/IMAP.AccessAsUser.All"]
    app = msal.PublicClientApplication(
        mailbox["client_id"],
        authority=f"{defaults['authority_host']}/{mailbox['tenant_id']}",
        verify=ca_file,
        instance_discovery=False,
    )
    context = ssl.create_default_context(cafile=ca_file)
    host, port = defaults["imap"]["host"], int(defaults["imap"]["port"])
    while True:
        began = time.monotonic()
        accounts = app.get_accounts(username=mailbox["username"])
        if accounts:
            result = app.acquire_token_silent(scopes, accounts[0], force_refresh=True)
        else:
            result = app.acquire_token_by_username_password(mailbox["username"], password, scopes)
        if not result or "access_token" not in result:
            print(f"token failed: {result}", file=sys.stderr, flush=True)
        else:
            with IMAPClient(host, port=port, ssl=True, ssl_context=context, timeout=30) as imap:
                imap.oauth2_login(mailbox["username"], result["access_token"])
                inbox = imap.select_folder("INBOX", readonly=True)
                imap.folder_status("INBOX", [b"UNSEEN"])
                imap.search(["LARGER", 25 * 2**20])
                if inbox[b"EXISTS"]:
                    imap.fetch([1], [b"INTERNALDATE"])
                imap.select_folder("Junk Email", readonly=True)
        time.sleep(max(0.0, interval - (time.monotonic() - began)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
