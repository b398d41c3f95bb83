"""The mailbox providers mailpipe knows by name, written once.

Each provider has the name the rest of mailpipe uses (metric labels, incidents, profiles'
``provider``), the aliases an operator or a rule may write instead (``gmail``, ``outlook``),
the MX host suffixes and recipient domains by which the reply catalog recognises it, and the
pattern by which customers name it in their mail. The reply catalog (``outbound/classify``),
incidents, rules, seeds in the config and the probes read them here. A site may add providers
of its own in the reply catalog's override directory (``[providers.NAME]``, see
``monitors/replies.toml``); those are recognised by the catalog only. Imports nothing of ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OTHER = "other"  # every MX and domain no provider below claims


@dataclass(frozen=True)
class Provider:
    name: str
    mx: tuple[str, ...]  # suffixes of the provider's MX host names
    domains: tuple[str, ...]  # recipient domains, for mail relayed through a smarthost
    aliases: tuple[str, ...] = ()  # how rules, seeds and operators may also spell it
    mentions: re.Pattern[str] | None = None  # how customers name it in their mail


PROVIDERS = (
    Provider("google", mx=("google.com", "googlemail.com"), domains=("gmail.com", "googlemail.com"),
             aliases=("gmail",),
             mentions=re.compile(r"gmail|google|googlemail|ジーメール|グーグル", re.IGNORECASE)),
    Provider("yahoo", mx=("yahoodns.net", "yahoo.com", "aol.com"),
             domains=("yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "aim.com", "aol.jp"),
             aliases=("aol",),
             mentions=re.compile(r"yahoo|ヤフー|\baol\b", re.IGNORECASE)),
    Provider("microsoft", mx=("outlook.com", "hotmail.com", "protection.outlook.com"),
             domains=("outlook.com", "hotmail.com", "live.com", "msn.com", "outlook.jp", "hotmail.co.jp", "live.jp"),
             aliases=("outlook", "hotmail"),
             mentions=re.compile(r"outlook|hotmail|microsoft|live\.com|\bmsn\b|マイクロソフト|ホットメール",
                                 re.IGNORECASE)),
    Provider("yahoo_japan", mx=("yahoo.co.jp",), domains=("yahoo.co.jp", "ymail.ne.jp"),
             mentions=re.compile(r"yahoo\.co\.jp|ヤフー", re.IGNORECASE)),
    Provider("apple", mx=("icloud.com", "me.com"), domains=("icloud.com", "me.com", "mac.com"),
             aliases=("icloud",), mentions=re.compile(r"icloud|\bme\.com|\bmac\.com|アイクラウド", re.IGNORECASE)),
    # Japanese carriers and ISPs: MX host names as Sisimai's rhost tables and the carriers' DNS give them
    # (mfsmax.docomo.ne.jp, lsean.ezweb.ne.jp, msmx.au.com, mx.softbank.ne.jp, mx.ocn.ne.jp, smmx.nifty.com).
    Provider("docomo", mx=("docomo.ne.jp",), domains=("docomo.ne.jp",),
             mentions=re.compile(r"docomo|ドコモ", re.IGNORECASE)),
    Provider("au", mx=("ezweb.ne.jp", "au.com"), domains=("ezweb.ne.jp", "au.com"), aliases=("kddi",),
             mentions=re.compile(r"ezweb|au\.com|\bau ?(?:mail|メール)|auメール", re.IGNORECASE)),
    Provider("softbank", mx=("softbank.ne.jp", "softbank.jp"),
             domains=("softbank.ne.jp", "i.softbank.jp", "ymobile.ne.jp"),
             mentions=re.compile(r"softbank|ソフトバンク|ymobile|ワイモバイル", re.IGNORECASE)),
    Provider("biglobe", mx=("biglobe.ne.jp",), domains=("biglobe.ne.jp",),
             mentions=re.compile(r"biglobe|ビッグローブ", re.IGNORECASE)),
    Provider("ocn", mx=("ocn.ne.jp",), domains=("ocn.ne.jp",), mentions=re.compile(r"\bocn\b", re.IGNORECASE)),
    Provider("sonet", mx=("so-net.ne.jp",), domains=("so-net.ne.jp",), aliases=("so-net",),
             mentions=re.compile(r"so-net|ソネット", re.IGNORECASE)),
    Provider("nifty", mx=("nifty.com",), domains=("nifty.com",), aliases=("niftymail",),
             mentions=re.compile(r"@nifty|nifty\.com|ニフティ", re.IGNORECASE)),
)

# Every spelling to the provider's name, the name itself included.
ALIASES = {spelling: p.name for p in PROVIDERS for spelling in (p.name, *p.aliases)}
# How customers name a provider in their mail.
MENTIONS = {p.name: p.mentions for p in PROVIDERS if p.mentions is not None}


def provider_of(name: str) -> str:
    """A provider as rules may spell it ("gmail") to the reply catalog's name ("google")."""
    key = name.strip().lower()
    if key not in ALIASES:
        raise ValueError(f"unknown provider {name!r} (one of {', '.join(sorted(ALIASES))})")
    return ALIASES[key]
