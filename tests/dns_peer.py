"""A real DNS server for tests: unbound on loopback, authoritative for the test zones.

Names outside the zones get NXDOMAIN at once (``local-zone: "." static``), so nothing reaches
the Internet and nothing waits for it.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import dkim
import dns.resolver
import nacl.encoding
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import free_port

DKIM_SELECTOR = "sel"


def dkim_key() -> tuple[bytes, str]:
    """A fresh RSA-2048 key: (private PEM for dkimpy, the DNS TXT value that publishes it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()


_KEY = dkim_key()
_OTHER_KEY = dkim_key()  # published by misconfigured.test, where mailpipe signs with _KEY
ED25519_SELECTOR = "ed"
ED25519_SEED = base64.b64encode(bytes(range(32))).decode()  # a fixed test key: dkimpy's base64 seed


def ed25519_record() -> str:
    public = nacl.signing.SigningKey(bytes(range(32))).verify_key.encode(nacl.encoding.Base64Encoder).decode()
    return f"v=DKIM1; k=ed25519; p={public}"


def dkim_private_key() -> bytes:
    """The private half of the ``sel._domainkey.example.test`` record, for the daemon's signing key."""
    return _KEY[0]


def zones_for_tests() -> dict[str, list[str]]:
    """example.test sends from 127.0.0.1 and signs with ``sel`` (RSA) and ``ed`` (Ed25519);
    bank.test sends only from 192.0.2.1 and publishes p=reject, so mail in its name from loopback
    fails DMARC. Recipients' domains: customer.test (its own MX; it sends from 127.0.0.1 too, so
its mail is authenticated and gets acknowledgements), gmail.test and yahoo.test
    (whose MX names are Google's and Yahoo's, served here by this server, so the provider is
    recognised as in production), nullmx.test (a null MX, RFC 7505) and fallback.test (no MX:
    its own address). mx.example.test, the EHLO name, has an SPF record of its own for
    null-sender mail; news.customer.test has an MX but no SOA of its own (Yahoo refuses it)."""
    return {
        "example.test": ['@ IN TXT "v=spf1 ip4:127.0.0.1 -all"', f"{DKIM_SELECTOR}._domainkey IN TXT {txt(_KEY[1])}",
                         f"{ED25519_SELECTOR}._domainkey IN TXT {txt(ed25519_record())}",
                         '_dmarc IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@example.test"',
                         "@ IN MX 10 mx.example.test.", "mx IN A 127.0.0.1", 'mx IN TXT "v=spf1 a -all"'],
        # Everything a sender gets wrong: 11 DNS-querying SPF terms, a DKIM key that is not the
        # one used for signing, no DMARC, a null MX.
        "misconfigured.test": ["@ IN TXT " + txt("v=spf1 " + " ".join(f"include:i{n}.misconfigured.test"
                                                                       for n in range(11)) + " ~all"),
                               *(f'i{n} IN TXT "v=spf1 ip4:192.0.2.{n} -all"' for n in range(11)),
                               f"{DKIM_SELECTOR}._domainkey IN TXT {txt(_OTHER_KEY[1])}", "@ IN MX 0 ."],
        "twospf.test": ['@ IN TXT "v=spf1 ip4:127.0.0.1 -all"', '@ IN TXT "v=spf1 mx -all"'],
        "bank.test": ['@ IN TXT "v=spf1 ip4:192.0.2.1 -all"', '_dmarc IN TXT "v=DMARC1; p=reject"'],
        "customer.test": ["@ IN MX 10 mx.customer.test.", "mx IN A 127.0.0.1", "news IN MX 10 mx.customer.test.",
                          '@ IN TXT "v=spf1 ip4:127.0.0.1 -all"'],
        # DMARC records by the RFC 7489 grammar: whitespace around "=" is valid, a rua without
        # a URI scheme is not.
        "spaced.test": ['@ IN TXT "v=spf1 ip4:127.0.0.1 -all"', '_dmarc IN TXT "v = DMARC1 ; p = reject"',
                        "@ IN MX 10 mx.example.test."],
        "noscheme.test": ['@ IN TXT "v=spf1 ip4:127.0.0.1 -all"',
                          '_dmarc IN TXT "v=DMARC1; p=none; rua=reports@noscheme.test"', "@ IN MX 10 mx.example.test."],
        "gmail.test": ["@ IN MX 5 gmail-smtp-in.l.google.com."],
        "google.com": ["gmail-smtp-in.l IN A 127.0.0.1"],
        "yahoo.test": ["@ IN MX 1 mta5.am0.yahoodns.net."],
        "yahoodns.net": ["mta5.am0 IN A 127.0.0.1"],
        "nullmx.test": ["@ IN MX 0 ."],
        "fallback.test": ["@ IN A 127.0.0.1"],
    }


def without_dkim(zones: dict[str, list[str]], domain: str = "example.test") -> dict[str, list[str]]:
    """The zones after ``domain`` rotated its DKIM keys out of DNS."""
    return {**zones, domain: [r for r in zones[domain] if "._domainkey" not in r]}


def sign(message: bytes, domain: str = "example.test",
         canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple")) -> bytes:
    """``message`` with a DKIM signature of ``domain`` made with the key the test zone publishes."""
    return dkim.sign(message, DKIM_SELECTOR.encode(), domain.encode(), _KEY[0],
                     include_headers=[b"from", b"to", b"subject", b"message-id"], canonicalize=canonicalize) + message


def txt(value: str) -> str:
    """A TXT rdata, split into the 255-byte strings DNS allows (DKIM keys are longer)."""
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


class Unbound:
    def __init__(self, zones: dict[str, list[str]], port: int | None = None):
        """``port``: listen where a stopped server did, to serve changed zones at the same address."""
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="mailpipe-dns-"))
        config = [
            "server:", "  interface: 127.0.0.1", f"  port: {self.port}", '  username: ""', '  chroot: ""',
            f'  directory: "{self.directory}"', f'  pidfile: "{self.directory}/unbound.pid"', "  use-syslog: no",
            '  logfile: ""', "  verbosity: 0", "  do-daemonize: no", "  do-not-query-localhost: no",
            '  module-config: "iterator"', '  local-zone: "." static',
            "remote-control:", "  control-enable: no",
        ]
        for zone, records in zones.items():
            zone_file = self.directory / f"{zone}.zone"
            zone_file.write_text("\n".join([
                f"$ORIGIN {zone}.", "$TTL 60", f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60",
                f"@ IN NS ns.{zone}.", "ns IN A 127.0.0.1", *records]) + "\n")
            config[config.index('  local-zone: "." static') + 1:0] = [f'  local-zone: "{zone}." transparent']
            config += ["auth-zone:", f'  name: "{zone}."', f'  zonefile: "{zone_file}"', "  for-downstream: yes",
                       "  for-upstream: yes", "  fallback-enabled: no"]
        (self.directory / "unbound.conf").write_text("\n".join(config) + "\n")
        self.process = subprocess.Popen(["unbound", "-d", "-c", str(self.directory / "unbound.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        resolver = self.resolver()
        deadline = time.monotonic() + 10
        zone = next(iter(zones))
        while True:
            try:
                resolver.resolve(f"ns.{zone}", "A", lifetime=1)
                return
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"unbound did not start: {self.process.stderr.read().decode()}") from None
                time.sleep(0.1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def resolver(self) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        return resolver

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)
