"""Bytes to text in the charsets Japanese mail really uses, never raising.

ISO-2022-JP is decoded as CP50220/CP50221 (Microsoft's superset that Outlook and most Japanese
clients send): each JIS pair is mapped to Shift_JIS and decoded as CP932, so NEC row 13 (①, ㈱,
№) and IBM extensions survive where Python's strict ``iso2022_jp`` codec fails; half-width
katakana (ESC ( I and SO/SI) are handled too. Shift_JIS is read as CP932 and EUC-JP falls back
to EUC-JIS-2004. A wrong or missing label is caught by trying the likely charsets strictly and
keeping the candidate that reads most like text.
"""

from __future__ import annotations

import codecs
import functools
import re

_ALIASES = {
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932", "ms_kanji": "cp932",
    "windows-31j": "cp932", "csshiftjis": "cp932", "cp932": "cp932",
    "euc-jp": "euc_jp", "x-euc-jp": "euc_jp", "eucjp": "euc_jp", "cseucpkdfmtjapanese": "euc_jp",
    "iso-2022-jp": "iso-2022-jp", "csiso2022jp": "iso-2022-jp", "iso-2022-jp-1": "iso-2022-jp",
    "iso-2022-jp-2": "iso-2022-jp", "iso-2022-jp-3": "iso-2022-jp", "iso-2022-jp-ms": "iso-2022-jp",
    "cp50220": "iso-2022-jp", "cp50221": "iso-2022-jp", "cp50222": "iso-2022-jp",
    "us-ascii": "utf-8", "ascii": "utf-8", "ansi_x3.4-1968": "utf-8", "utf8": "utf-8", "x-unknown": "",
    "unknown-8bit": "", "x-user-defined": "", "default": "", "": "",
}
_FALLBACKS = {"euc_jp": "euc_jis_2004"}
_GUESSES = ("utf-8", "cp932", "euc_jp")
_ESC = 0x1B
_SINGLE_BYTE = frozenset({"latin-1", "cp1252", "cp1250", "cp1251", "cp1254", "mac-roman"})


def normalise(charset: str | None) -> str:
    """The codec mailpipe decodes a declared charset with; "" means unknown, so guess."""
    name = (charset or "").strip().strip('"').lower()
    if name in _ALIASES:
        return _ALIASES[name]
    try:
        return codecs.lookup(name).name
    except LookupError:
        return ""


def decode(data: bytes, charset: str | None = None) -> str:
    codec = normalise(charset)
    if _ESC in data and (codec in ("", "iso-2022-jp", "utf-8") or b"\x1b$B" in data or b"\x1b$@" in data):
        return decode_iso2022jp(data)
    if codec in _SINGLE_BYTE or codec.startswith("iso8859"):
        # A single-byte label decodes anything; valid multi-byte UTF-8 under it is a mislabel.
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec:
        for name in (codec, _FALLBACKS.get(codec)):
            if name:
                try:
                    return data.decode(name)
                except (UnicodeDecodeError, LookupError):
                    pass
    return guess(data, codec)


def guess(data: bytes, declared: str = "") -> str:
    """The strict decoding that reads most like text, else Windows-1252, else U+FFFD for bad bytes."""
    try:
        data.decode("ascii")
        return data.decode("ascii")
    except UnicodeDecodeError:
        pass
    candidates = []
    for name in _GUESSES:
        try:
            candidates.append(data.decode(name))
        except UnicodeDecodeError:
            continue
    if candidates:
        return max(candidates, key=_plausibility)
    try:
        return data.decode("cp1252")  # what unlabelled Western mail nearly always is
    except UnicodeDecodeError:
        return data.decode(declared or "utf-8", errors="replace")


def _plausibility(text: str) -> float:
    """Share of characters that ordinary Japanese or Western text is made of."""
    if not text:
        return 0.0
    good = sum(1 for ch in text if ch.isascii() or "\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff"
               or "\uff01" <= ch <= "\uff9f" or ch in "、。「」・ー" or "\u00c0" <= ch <= "\u017f")
    return good / len(text)


def decode_iso2022jp(data: bytes) -> str:
    """CP50221-compatible: JIS pairs become Shift_JIS and are decoded as CP932.

    The text is cut at its escape sequences and shift-out/shift-in (SO/SI) bytes, and each run
    between them converted whole in C (``bytes.translate``, slices, one integer OR): byte by
    byte in Python, decoding was most of the CPU of parsing a Japanese mail. A JIS run takes two
    bytes from 0x21-0x7E as a pair and any other byte as itself."""
    out: list[bytes] = []
    mode, shifted = "ascii", False
    for index, run in enumerate(_SWITCHES.split(data)):
        if index % 2:
            if run in _SHIFTS:
                shifted = run == _SHIFT_OUT
            else:
                mode = _MODES[run]
        elif not run:
            continue
        elif shifted or mode == "kana":
            out.append(run.translate(_HALF_WIDTH_KANA))
        elif mode == "jis":
            out.append(_shift_jis_run(run))
        elif mode == "jisx0212":  # JIS X 0212: no CP932 equivalent
            out.append(b"".join(_GETA if len(pair) == 2 else pair for pair in _JIS_PAIR.findall(run)))
        else:
            out.append(run)
    return b"".join(out).decode("cp932", errors="replace")


def _shift_jis_run(run: bytes) -> bytes:
    """A JIS X 0208 run in Shift_JIS. A run of pairs alone (nearly every one) is converted a
    whole column at a time: the first bytes through a table; the second bytes through another,
    chosen by the first byte's parity, which an integer OR sets as each second byte's top bit."""
    if len(run) % 2 or not _PAIRS_ONLY.fullmatch(run):
        return b"".join(map(_shift_jis, _JIS_PAIR.findall(run)))
    first, second = run[0::2], run[1::2]
    parity = int.from_bytes(first.translate(_ODD_TOP_BIT), "big")
    flagged = (int.from_bytes(second, "big") | parity).to_bytes(len(second), "big")
    out = bytearray(len(run))
    out[0::2] = first.translate(_SJIS_FIRST)
    out[1::2] = flagged.translate(_SJIS_SECOND)
    return bytes(out)


@functools.cache
def _shift_jis(pair: bytes) -> bytes:
    """A JIS pair's Shift_JIS bytes; a single byte as it is (at most 94 × 94 + 256 entries)."""
    return _jis_to_sjis(pair[0], pair[1]) if len(pair) == 2 else pair


def _jis_to_sjis(j1: int, j2: int) -> bytes:
    s1 = (j1 + 1) // 2 + (0x70 if j1 <= 0x5E else 0xB0)
    s2 = j2 + (0x1F if j1 % 2 else 0x7E)
    if j1 % 2 and s2 >= 0x7F:
        s2 += 1
    return bytes((s1, s2))


_SHIFT_OUT, _SHIFT_IN = b"\x0e", b"\x0f"
_SHIFTS = (_SHIFT_OUT, _SHIFT_IN)
_MODES = {b"\x1b$B": "jis", b"\x1b$@": "jis", b"\x1b(B": "ascii", b"\x1b(J": "ascii", b"\x1b(H": "ascii",
          b"\x1b(I": "kana", b"\x1b$(D": "jisx0212"}
_SWITCHES = re.compile(b"(" + b"|".join(re.escape(switch) for switch in (*_MODES, *_SHIFTS)) + b")")
_JIS_PAIR = re.compile(rb"[\x21-\x7e]{2}|[\x00-\xff]")
_HALF_WIDTH_KANA = bytes(byte | 0x80 if 0x21 <= byte <= 0x5F else byte for byte in range(256))
_GETA = "〓".encode("cp932")
_PAIRS_ONLY = re.compile(rb"[\x21-\x7e]*")
_JIS_BYTES = range(0x21, 0x7F)
_ODD_TOP_BIT = bytes(0x80 * (byte % 2) for byte in range(256))
_SJIS_FIRST = bytes(_jis_to_sjis(byte, 0x21)[0] if byte in _JIS_BYTES else byte for byte in range(256))
# A second byte with the top bit set follows an odd first byte (0x21), without it an even one (0x22).
_SJIS_SECOND = bytes(_jis_to_sjis(0x21 if flagged & 0x80 else 0x22, flagged & 0x7F)[1]
                     if flagged & 0x7F in _JIS_BYTES else 0 for flagged in range(256))
