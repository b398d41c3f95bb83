"""DKIM keys: read and checked, generated, and published as the TXT record.

A ``SigningKey`` is what ``outbound.signing`` signs with, what ``config`` checks a key file
against and what ``monitors.dns_checks`` compares with the published record; it lives down here
so that all three can use it without importing upward. ``load_key`` refuses what cannot sign:
an unreadable file, a key of another algorithm, an RSA key under 1024 bits. A key is parsed
into OpenSSL's form once (``SigningKey.loaded``) and signs every message with it. Key
generation writes what ``mailpipe dkim keygen`` prints: the private key file and the TXT record
to publish.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class SigningKeyError(ValueError):
    """A key file that cannot sign: unreadable, or not a key of the stated algorithm."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: Algorithm
    private_key: bytes  # PEM for RSA; the base64 seed dkimpy expects for ed25519

    @cached_property
    def loaded(self) -> PrivateKey:
        """The key as OpenSSL signs with it, parsed once: loading an RSA key checks it, which
        costs more than a signature, so no message pays for it."""
        if self.algorithm == "ed25519-sha256":
            return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(self.private_key.strip()))
        key = serialization.load_pem_private_key(self.private_key, None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"a {type(key).__name__}, not an RSA key")
        return key

    @property
    def bits(self) -> int:
        key = self.loaded
        return 256 if isinstance(key, ed25519.Ed25519PrivateKey) else key.key_size

    def public_record(self) -> str:
        """The TXT value to publish at ``<selector>._domainkey.<domain>``."""
        key = self.loaded
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return f"v=DKIM1; k=ed25519; p={base64.b64encode(key.public_key().public_bytes_raw()).decode()}"
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def load_key(domain: str, selector: str, algorithm: Algorithm, path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
    key = SigningKey(domain.lower(), selector, algorithm, data)
    try:
        bits = key.bits
        key.public_record()
    except Exception as exc:
        raise SigningKeyError(f"{path} is not a {algorithm} private key: {exc}") from None
    if algorithm == "rsa-sha256" and bits < 1024:
        raise SigningKeyError(f"{path}: a {bits}-bit RSA key is refused by Gmail, Yahoo and Outlook (use 2048)")
    return key


def generate(algorithm: Algorithm, bits: int = 2048) -> bytes:
    """A new private key in the form ``SigningKey`` reads."""
    if algorithm == "ed25519-sha256":
        return base64.b64encode(ed25519.Ed25519PrivateKey.generate().private_bytes_raw()) + b"\n"
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_key(path: Path, data: bytes) -> None:
    """Owner-only from the first byte; an existing key is never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def zone_line(key: SigningKey) -> str:
    """The record as a zone file line, split into the 255-byte strings DNS allows."""
    value = key.public_record()
    chunks = " ".join(f'"{value[i:i + 250]}"' for i in range(0, len(value), 250))
    return f"{key.selector}._domainkey.{key.domain}. IN TXT ( {chunks} )"
