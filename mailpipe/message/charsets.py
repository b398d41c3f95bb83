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
    """CP50221-compatible: JIS pairs become Shift_JIS and are decoded as CP932."""
    out = bytearray()
    mode = "ascii"
    shifted = False
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == _ESC:
            seq = data[i + 1:i + 3]
            if seq in (b"$B", b"$@"):
                mode, i = "jis", i + 3
                continue
            if seq in (b"(B", b"(J", b"(H"):
                mode, i = "ascii", i + 3
                continue
            if seq == b"(I":
                mode, i = "kana", i + 3
                continue
            if data[i + 1:i + 4] == b"$(D":  # JIS X 0212: no CP932 equivalent
                mode, i = "jisx0212", i + 4
                continue
        if byte == 0x0E:
            shifted, i = True, i + 1
            continue
        if byte == 0x0F:
            shifted, i = False, i + 1
            continue
        if byte in (0x0A, 0x0D):
            out.append(byte)
            i += 1
            continue
        if shifted or mode == "kana":
            out.append(byte | 0x80 if 0x21 <= byte <= 0x5F else byte)
            i += 1
        elif mode in ("jis", "jisx0212") and i + 1 < n and 0x21 <= byte <= 0x7E and 0x21 <= data[i + 1] <= 0x7E:
            out.extend(_jis_to_sjis(byte, data[i + 1]) if mode == "jis" else "〓".encode("cp932"))
            i += 2
        else:
            out.append(byte)
            i += 1
    return bytes(out).decode("cp932", errors="replace")


def _jis_to_sjis(j1: int, j2: int) -> bytes:
    s1 = (j1 + 1) // 2 + (0x70 if j1 <= 0x5E else 0xB0)
    s2 = j2 + (0x1F if j1 % 2 else 0x7E)
    if j1 % 2 and s2 >= 0x7F:
        s2 += 1
    return bytes((s1, s2))
