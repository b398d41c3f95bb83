"""What a hostile DKIM signature may cost us, bounded: dkimpy with two of its costs cut.

Why: any sender chooses the body we canonicalise and, through their own DNS, the key we verify
with, and dkimpy spends time on both in single calls that hold the GIL, so the event loop and
every other thread stop while they run (found by review, measured on this machine):
- relaxed body canonicalisation strips the blanks before each line end with a regular
  expression, ``[\\t ]+\\r\\n``, which backtracks over every run of blanks not ending a line: a
  body of 30,000 blanks between two letters took 1.3 s per signature. Here it is one split, an
  ``rstrip`` per line and a join, with the same bytes out;
- RSA verification is ``pow`` with the key's public exponent, which nothing bounds: a key whose
  exponent is as long as its 8,192-bit modulus took 1.1 s a signature. Keys in use have an
  exponent of 65,537 and at most 4,096 bits (RFC 8301 asks verifiers to handle 1,024 to 4,096),
  so a longer exponent or modulus is a signature that does not verify.
Importing this module applies both to the dkimpy the process runs; inbound verification and
outbound signing both import it.
"""

from __future__ import annotations

from typing import Any

import dkim
import dkim.canonicalization

MAX_MODULUS_BITS = 4096
MAX_EXPONENT_BITS = 32
_verify = dkim.RSASSA_PKCS1_v1_5_verify


def strip_trailing_whitespace(content: bytes) -> bytes:
    """dkimpy's ``strip_trailing_whitespace``, in linear time: each line's trailing blanks go,
    the text after the last CRLF (no line end) keeps its own."""
    lines = content.split(b"\r\n")
    return b"\r\n".join([line.rstrip(b"\t ") for line in lines[:-1]] + lines[-1:])


def rsa_verify(digest: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """dkimpy's RSA verification, refusing keys no signer uses before any arithmetic."""
    if public_key["modulus"].bit_length() > MAX_MODULUS_BITS or \
            public_key["publicExponent"].bit_length() > MAX_EXPONENT_BITS:
        return False
    return bool(_verify(digest, signature, public_key))


dkim.canonicalization.strip_trailing_whitespace = strip_trailing_whitespace
dkim.RSASSA_PKCS1_v1_5_verify = rsa_verify
