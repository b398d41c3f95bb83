"""DKIM signing: the last change made to an outgoing message, with dkimpy's DKIM and OpenSSL's
signatures.

Each configured key signs the mail of its own domain (the From domain, or its organisational
parent's subdomain never): several keys of one domain give several signatures, which is how
rsa-sha256 and ed25519-sha256 dual signing works (RFC 8463: receivers that do not know
ed25519 still verify the RSA one). dkimpy signs the From field one more time than it occurs
(over-signing), so nobody can add a second From without breaking the signature. Mail of a
domain without a key goes out unsigned. The keys themselves (reading, generating, the record to
publish) are ``mailpipe.keys``.

dkimpy does the DKIM: canonicalisation, which fields are signed, the tag list and its folding.
Its RSA is pure Python, about fifteen times slower than OpenSSL, so the signature itself is
made by ``cryptography`` (see ``OpenSSLDKIM``); the output is byte for byte what dkimpy's own
signer gives, which the tests check against dkimpy and against the RFC 8463 examples.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from mailpipe.keys import PrivateKey, SigningKey

_SIGNED_HEADERS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
                   b"reply-to", b"mime-version", b"content-type", b"content-transfer-encoding",
                   b"list-unsubscribe", b"list-unsubscribe-post")

# What dkimpy's sign() parses before it calls gen_header, which ignores it: a 29-byte RSA key of
# zeros (microseconds to parse, where a real 2048-bit PEM costs dkimpy's pure-Python ASN.1 more
# than OpenSSL's signature) and a seed of zeros. Were a later dkimpy to sign without calling
# gen_header, the zero RSA key would raise ("digest too large") rather than sign.
_STAND_INS = {
    "rsa-sha256": b"-----BEGIN RSA PRIVATE KEY-----\nMBsCAQACAQACAQACAQACAQACAQACAQACAQACAQA=\n"
                  b"-----END RSA PRIVATE KEY-----\n",
    "ed25519-sha256": base64.b64encode(bytes(32)),
}


# The empty line that ends the header block, as dkimpy's rfc822_parse splits lines (on CRLF or LF).
_HEADER_END = re.compile(rb"(?:\A|\n)(\r?\n)")
_LINE_END = re.compile(rb"\r?\n")


class OpenSSLDKIM(dkim.DKIM):
    """dkimpy's ``DKIM`` whose signature is made by OpenSSL with a key loaded once.

    dkimpy has no hook for its cryptography: ``DKIM.sign`` parses the PEM it is given for every
    message, and ``gen_header`` signs the header hash with the pure-Python RSA. This subclass
    overrides ``gen_header``, with dkimpy 1.1's own steps and helpers (fold, blank ``b=``,
    ``hash_headers``), signing the hash with the key given to ``sign_with`` and canonicalising
    only the fields it signs; and ``set_message``, so that dkimpy's parser reads the header
    block only. One instance parses the message and canonicalises its signed fields once for all
    of its signatures (rsa-sha256 and ed25519-sha256 sign the same fields)."""

    _key: PrivateKey

    def set_message(self, message: bytes | None) -> None:
        """dkimpy's ``set_message`` with ``rfc822_parse`` given the header block alone: it splits
        the whole message into lines and joins the body's again, a tenth of the signature's CPU
        for a 5 KB reply. The body is the rest, its line ends made CRLF as rfc822_parse makes them."""
        self._canonicalised: dict[tuple[type, frozenset[bytes]], list[tuple[bytes, bytes]]] = {}
        end = _HEADER_END.search(message) if message else None
        if end is None:
            super().set_message(message)
            return
        super().set_message(message[:end.end()])
        body = message[end.end():]
        self.body = body if body.count(b"\n") == body.count(b"\r\n") else _LINE_END.sub(b"\r\n", body)

    def sign_with(self, key: SigningKey, include_headers: Sequence[bytes],
                  canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple")) -> bytes:
        """The ``DKIM-Signature`` field (with its CRLF) of ``key`` over this message."""
        self._key = key.loaded
        return self.sign(key.selector.encode(), key.domain.encode(), _STAND_INS[key.algorithm],
                         signature_algorithm=key.algorithm.encode(), include_headers=list(include_headers),
                         canonicalize=canonicalize)

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: Sequence[bytes],
                   canon_policy: CanonicalizationPolicy, header_name: bytes, pk: object,
                   standardize: bool = False) -> bytes:
        """dkimpy's ``DomainSigner.gen_header`` for DKIM-Signature (``standardize`` is ARC's,
        never asked for here), with ``_key`` signing where dkimpy used ``pk``."""
        # dkimpy blanks b= here and again in hash_headers; once (there) gives the same bytes. Its
        # pattern steps through the placeholder (60 zeros that fold b= onto a line of its own) a
        # character at a time, so the placeholder is cut off first: hash_headers blanks nothing more.
        header_value = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(header_name),
                                 linesep=b"\r\n")
        tags = dict(fields)
        if header_value.endswith(b"b=" + tags[b"b"]):
            header_value = header_value[:-len(tags[b"b"])]
        hasher = self.hasher()
        self.signed_headers = dkim.hash_headers(hasher, canon_policy, self._canonical(canon_policy, include_headers),
                                                include_headers, (header_name, b" " + header_value), tags)
        index = next(i for i, (tag, _) in enumerate(fields) if tag == b"b")
        fields[index] = (b"b", base64.b64encode(_signature(self._key, hasher.digest())))
        return dkim.fold(b"; ".join(b"=".join(x) for x in fields) + self.linesep, namelen=len(header_name),
                         linesep=self.linesep)

    def _canonical(self, canon_policy: CanonicalizationPolicy,
                   include_headers: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        """The fields of a signed name, canonicalised, in the message's order (so hash_headers
        picks the same ones): only those (dkimpy does all, and a client's reply carries a dozen it
        does not sign), and once per message for all of its signatures."""
        names = frozenset(include_headers)
        key = (canon_policy.header_algorithm, names)
        if key not in self._canonicalised:
            self._canonicalised[key] = canon_policy.canonicalize_headers(
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
