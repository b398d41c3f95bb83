"""A real IMAP server for tests: Dovecot on loopback with passwd-file users, each with an INBOX
and a Junk folder (the seed mailboxes placement probes look in). With ``introspection_url``
it also takes OAuth 2.0 logins (XOAUTH2, OAUTHBEARER), validating each token at that
introspection endpoint, and, with ``scope``, only tokens carrying that scope."""

from __future__ import annotations

import imaplib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

_UNPRIVILEGED = 65534  # Dovecot refuses uid 0 for mail; nobody owns the mailboxes


class Dovecot:
    def __init__(self, users: dict[str, str], introspection_url: str = "", scope: str = ""):
        self.users = users
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="mailpipe-dovecot-"))
        self.directory.chmod(0o755)
        home = self.directory / "home"
        home.mkdir()
        (self.directory / "users").write_text("".join(f"{user}:{{PLAIN}}{password}::::::\n"
                                                      for user, password in users.items()))
        config = f"""
base_dir = {self.directory}/run
state_dir = {self.directory}/state
log_path = {self.directory}/dovecot.log
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if introspection_url else ""}
listen = 127.0.0.1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.directory}/users
}}
{self._oauth2_passdb() if introspection_url else ""}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.directory}/users
  default_fields = uid={_UNPRIVILEGED} gid={_UNPRIVILEGED} home={home}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
namespace inbox {{
  inbox = yes
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
}}
"""
        if introspection_url:
            (self.directory / "oauth2.conf.ext").write_text(
                f"introspection_mode = post\nintrospection_url = {introspection_url}\nusername_attribute = username\n"
                f"active_attribute = active\nactive_value = true\nforce_introspection = yes\n"
                + (f"scope = {scope}\n" if scope else ""))
        (self.directory / "dovecot.conf").write_text(config)
        os.chown(home, _UNPRIVILEGED, _UNPRIVILEGED)
        self.process = subprocess.Popen(["dovecot", "-F", "-c", str(self.directory / "dovecot.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"dovecot did not start: {self.log()}")
            time.sleep(0.05)

    def _oauth2_passdb(self) -> str:
        return (f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {self.directory}/oauth2.conf.ext\n}}\n")

    def log(self) -> str:
        path = self.directory / "dovecot.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""

    def file(self, user: str, folder: str, message: bytes) -> None:
        """Puts a message into a user's folder, as a provider's filter would."""
        client = imaplib.IMAP4("127.0.0.1", self.port)
        try:
            client.login(user, self.users[user])
            status, detail = client.append(folder, None, None, message)
            if status != "OK":
                raise RuntimeError(f"APPEND to {folder}: {detail}")
        finally:
            client.logout()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)
