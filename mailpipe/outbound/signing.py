"""DKIM signing with dkimpy: the last change made to an outgoing message.

Each configured key signs the mail of its own domain (the From domain, or its organisational
parent's subdomain never): several keys of one domain give several signatures, which is how
rsa-sha256 and ed25519-sha256 dual signing works (RFC 8463: receivers that do not know
ed25519 still verify the RSA one). dkimpy signs the From field one more time than it occurs
(over-signing), so nobody can add a second From without breaking the signature. Mail of a
domain without a key goes out unsigned. The keys themselves (reading, generating, the record to
publish) are ``mailpipe.keys``.
"""

from __future__ import annotations

from collections.abc import Iterable

import dkim

from mailpipe.keys import SigningKey

_SIGNED_HEADERS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
                   b"reply-to", b"mime-version", b"content-type", b"content-transfer-encoding",
                   b"list-unsubscribe", b"list-unsubscribe-post")


class Signer:
    def __init__(self, keys: Iterable[SigningKey]):
        self._keys: dict[str, list[SigningKey]] = {}
        for key in keys:
            self._keys.setdefault(key.domain, []).append(key)

    def domains(self) -> frozenset[str]:
        return frozenset(self._keys)

    def sign(self, raw: bytes, domain: str) -> bytes:
        """``raw`` with one DKIM-Signature per key of ``domain`` on top; unchanged without keys."""
        signatures = []
        for key in self._keys.get(domain.lower(), ()):
            signer = dkim.DKIM(raw)
            present = {name.lower() for name, _ in signer.headers}
            include = [h for h in _SIGNED_HEADERS if h in present]
            signatures.append(signer.sign(key.selector.encode(), key.domain.encode(), key.private_key,
                                          signature_algorithm=key.algorithm.encode(),
                                          include_headers=[*include, b"from"]))
        return b"".join(signatures) + raw
