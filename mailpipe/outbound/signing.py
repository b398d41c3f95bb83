"""DKIM signing: the last change made to an outgoing message, with dkimpy's canonicalisation and
OpenSSL's signatures.

Each configured key signs the mail of its own domain (the From domain, or its organisational
parent's subdomain never): several keys of one domain give several signatures, which is how
rsa-sha256 and ed25519-sha256 dual signing works (RFC 8463: receivers that do not know
ed25519 still verify the RSA one). dkimpy signs the From field one more time than it occurs
(over-signing), so nobody can add a second From without breaking the signature. Mail of a
domain without a key goes out unsigned. The keys themselves (reading, generating, the record to
publish) are ``mailpipe.keys``.

dkimpy reads the header block, canonicalises fields and body, picks the signed fields and folds
the tag list; ``OpenSSLDKIM`` strings those steps together as dkimpy's ``DKIM.sign`` does, with
the signature made by ``cryptography`` (dkimpy's RSA is pure Python, about fifteen times slower
than OpenSSL) and without the rest of ``DKIM.sign``'s work per message (a PEM to parse, the
whole header block canonicalised, the tag list folded and searched for b= again), which cost a
third as much as the signature. The output is byte for byte what dkimpy's own signer gives,
which the tests check against dkimpy and against the RFC 8463 examples.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterable, Sequence

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from mailpipe import dkim_limits  # noqa: F401  (dkimpy's body canonicalisation in linear time)
from mailpipe.keys import PrivateKey, SigningKey

_SIGNED_HEADERS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
                   b"reply-to", b"mime-version", b"content-type", b"content-transfer-encoding",
                   b"list-unsubscribe", b"list-unsubscribe-post")

_FIELD_NAME = b"DKIM-Signature"
# What b= holds while the tag list is folded for the header hash, as in dkimpy's DKIM.sign: 60
# characters fold b= onto a line of its own, so the folding before it is that of the final field.
_PLACEHOLDER = b"0" * 60
# The empty line that ends the header block, as dkimpy's rfc822_parse splits lines (on CRLF or LF).
_HEADER_END = re.compile(rb"(?:\A|\n)(\r?\n)")
_LINE_END = re.compile(rb"\r?\n")


class OpenSSLDKIM:
    """One message to sign: its header fields as dkimpy's ``rfc822_parse`` reads them, its body
    with CRLF line ends; the canonical signed fields and the body hash are made once for all of
    its signatures (rsa-sha256 and ed25519-sha256 sign the same fields and body)."""

    def __init__(self, message: bytes):
        end = _HEADER_END.search(message)
        if end is None:
            self.headers, self.body = dkim.rfc822_parse(message)
        else:  # rfc822_parse splits the whole message into lines and joins the body's again
            self.headers = dkim.rfc822_parse(message[:end.end()])[0]
            body = message[end.end():]
            self.body = body if body.count(b"\n") == body.count(b"\r\n") else _LINE_END.sub(b"\r\n", body)
        self._canonicalised: dict[tuple[type, frozenset[bytes]], list[tuple[bytes, bytes]]] = {}
        self._body_hashes: dict[type, bytes] = {}

    def sign_with(self, key: SigningKey, include_headers: Sequence[bytes],
                  canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple")) -> bytes:
        """The ``DKIM-Signature`` field (with its CRLF) of ``key`` over this message, as dkimpy's
        ``DKIM.sign`` writes it (``i=@domain``, t= now, no l=)."""
        include = tuple(name.lower() for name in include_headers)
        if b"from" not in include:
            raise dkim.ParameterError("The From header field MUST be signed")
        policy = CanonicalizationPolicy.from_c_value(b"/".join(canonicalize))
        domain = key.domain.encode()
        fields = [(b"v", b"1"), (b"a", key.algorithm.encode()), (b"c", policy.to_c_value()), (b"d", domain),
                  (b"i", b"@" + domain), (b"q", b"dns/txt"), (b"s", key.selector.encode()),
                  (b"t", str(int(time.time())).encode("ascii")), (b"h", b" : ".join(include)),
                  (b"bh", self._body_hash(policy)), (b"b", _PLACEHOLDER)]
        folded = dkim.fold(b"; ".join(b"=".join(field) for field in fields), namelen=len(_FIELD_NAME),
                           linesep=b"\r\n")
        # dkimpy blanks b= with a pattern that steps through the placeholder a character at a
        # time; the placeholder is the folded value's end, so cutting it off blanks the same.
        assert folded.endswith(b"b=" + _PLACEHOLDER), "60 characters fold b= onto a line of its own"
        unsigned = policy.canonicalize_headers([(_FIELD_NAME, b" " + folded[:-len(_PLACEHOLDER)])])[0]
        signed = dkim.select_headers(self._canonical(policy, include), include)
        hashed = b"".join(name + b":" + value for name, value in signed)
        digest = hashlib.sha256(hashed + unsigned[0] + b":" + unsigned[1].rstrip()).digest()
        fields[-1] = (b"b", base64.b64encode(_signature(key.loaded, digest)))
        return _FIELD_NAME + b": " + dkim.fold(b"; ".join(b"=".join(field) for field in fields) + b"\r\n",
                                               namelen=len(_FIELD_NAME), linesep=b"\r\n")

    def _body_hash(self, policy: CanonicalizationPolicy) -> bytes:
        algorithm = policy.body_algorithm
        if algorithm not in self._body_hashes:
            self._body_hashes[algorithm] = base64.b64encode(
                hashlib.sha256(policy.canonicalize_body(self.body)).digest())
        return self._body_hashes[algorithm]

    def _canonical(self, policy: CanonicalizationPolicy, include: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        """The fields of a signed name, canonicalised, in the message's order (so select_headers
        picks the same ones): only those (dkimpy does all, and a client's reply carries a dozen it
        does not sign)."""
        names = frozenset(include)
        key = (policy.header_algorithm, names)
        if key not in self._canonicalised:
            self._canonicalised[key] = policy.canonicalize_headers(
                [field for field in self.headers if field[0].lower() in names])
        return self._canonicalised[key]


def _signature(key: PrivateKey, digest: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 over the SHA-256 digest (RFC 6376), or Ed25519 over it (RFC 8463)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    return key.sign(digest)


class Signer:
    def __init__(self, keys: Iterable[SigningKey]):
        self._keys: dict[str, list[SigningKey]] = {}
        for key in keys:
            self._keys.setdefault(key.domain, []).append(key)

    def domains(self) -> frozenset[str]:
        return frozenset(self._keys)

    def sign(self, raw: bytes, domain: str) -> bytes:
        """``raw`` with one DKIM-Signature per key of ``domain`` on top; unchanged without keys."""
        keys = self._keys.get(domain.lower(), ())
        if not keys:
            return raw
        message = OpenSSLDKIM(raw)
        present = {name.lower() for name, _ in message.headers}
        include = [*(h for h in _SIGNED_HEADERS if h in present), b"from"]
        return b"".join(message.sign_with(key, include) for key in keys) + raw
