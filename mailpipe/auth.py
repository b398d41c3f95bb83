"""Inbound SPF, DKIM and DMARC, summed up as an RFC 8601 Authentication-Results header.

pyspf evaluates SPF for the connecting IP and envelope sender; dkimpy verifies every
DKIM-Signature; DMARC is the From domain's published policy (the organisational domain's when
the From domain has none, found with the public suffix list) and whether a passing SPF or DKIM
domain aligns with From (relaxed or strict, as the record says). DNS goes through dnspython's
default resolver, which the daemon points at the configured nameservers. A DNS failure or
timeout yields ``temperror``; verification never raises and never blocks mail: the verdict is
an input to triage (a VIP whose DMARC fails is not trusted as a VIP), not a gate.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import dkim
import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import spf
from publicsuffixlist import PublicSuffixList

from mailpipe import dkim_limits  # noqa: F401  (dkimpy's hostile-input costs bounded)
from mailpipe.dmarc_record import Record, is_dmarc, parse_record

_PSL = PublicSuffixList()
_DNS_TIMEOUT = 5.0
_CACHE_ENTRIES = 10_000
_MISSING_SECONDS = 60.0
_SIGNATURE = re.compile(rb"^dkim-signature:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", re.IGNORECASE | re.MULTILINE)
_SIGNING_DOMAIN = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]+)")
# A signature of 30 signed fields with a 4,096-bit key is about 1,100 bytes. dkimpy looks up each
# signed field name in every header of the message, so a signature naming thousands of fields
# over thousands of headers cost a second of CPU (found by review): a longer one is not tried.
MAX_SIGNATURE_BYTES = 8192
# Each signature costs a key lookup and a body hash. RFC 6376 section 6.1 lets a verifier limit
# how many it tries; mail carries one to three (the author's domain, its provider's, a list's).
MAX_DKIM_SIGNATURES = 8


@dataclass(frozen=True)
class Verdict:
    spf: str
    spf_domain: str
    dkim: tuple[tuple[str, str], ...]  # (result, signing domain) per signature
    dmarc: str
    dmarc_policy: str
    from_domain: str

    def from_authenticated(self) -> bool:
        """Whether the From domain is proven: DMARC passed, or (where it publishes no DMARC
        record) SPF or a DKIM signature passed for a domain aligned with it (relaxed)."""
        if self.dmarc == "pass":
            return True
        if not self.from_domain:
            return False
        organisational = organisational_domain(self.from_domain)
        passed = [self.spf_domain] if self.spf == "pass" else []
        passed += [domain for result, domain in self.dkim if result == "pass"]
        return any(organisational_domain(domain) == organisational for domain in passed)

    def header(self, authserv_id: str) -> str:
        """The Authentication-Results value: ``authserv-id; spf=…; dkim=…; dmarc=…``."""
        parts = [authserv_id, f"spf={self.spf} smtp.mailfrom={self.spf_domain or 'unknown'}"]
        parts += [f"dkim={result} header.d={domain}" for result, domain in self.dkim] or ["dkim=none"]
        policy = f" policy.dmarc={self.dmarc_policy}" if self.dmarc_policy else ""
        parts.append(f"dmarc={self.dmarc}{policy} header.from={self.from_domain or 'unknown'}")
        return "; ".join(parts)


def configure_resolver(nameservers: list[tuple[str, int]], *, cache: bool = False) -> None:
    """Point dnspython's default resolver (used by pyspf and dkimpy too) at these servers, the
    system's when none are given. With ``cache``, answers, negative ones too, are kept for their
    TTL, as a daemon that looks up the same senders' domains all day should: the lookups, more
    than the checks, were most of a message's authentication time (bench/triage.py)."""
    try:
        resolver = _resolver(nameservers, _Remembering if cache else dns.resolver.Resolver)
    except dns.resolver.NoResolverConfiguration:
        return  # no resolv.conf: every lookup is a temperror, as it would be without us
    dns.resolver.default_resolver = resolver


class _Remembering(dns.resolver.Resolver):
    """A resolver that answers a question it was asked before straight from its memory, for the
    answer's TTL (a name or record that does not exist: for its negative TTL, at most a minute).
    dnspython's own cache (kept too, for the questions it asks on its way) is reached only after a
    name is parsed, the search list walked and, for a missing record, the resolution run again to
    its exception: twice per message that was most of authentication's CPU (bench/triage.py).
    A missing name is remembered as its exception's class and arguments, never the exception
    raised, whose traceback would keep the message being checked alive. When the memory is full,
    what expired goes, then the older half."""

    def __init__(self, configure: bool = True):
        super().__init__(configure=configure)
        self.cache = dns.resolver.LRUCache(_CACHE_ENTRIES)
        self._answers: dict[tuple[object, ...], tuple[float, dns.resolver.Answer | _Missing]] = {}
        self._forgetting = threading.Lock()

    def resolve(self, qname: dns.name.Name | str, rdtype: dns.rdatatype.RdataType | str = dns.rdatatype.A,
                rdclass: dns.rdataclass.RdataClass | str = dns.rdataclass.IN, tcp: bool = False,
                source: str | None = None, raise_on_no_answer: bool = True, source_port: int = 0,
                lifetime: float | None = None, search: bool | None = None) -> dns.resolver.Answer:
        key = (str(qname).lower(), dns.rdatatype.RdataType.make(rdtype), dns.rdataclass.RdataClass.make(rdclass), tcp,
               raise_on_no_answer, search)
        now = time.time()
        remembered = self._answers.get(key)
        if remembered is not None and remembered[0] > now:
            if isinstance(remembered[1], _Missing):
                raise remembered[1].kind(**remembered[1].arguments)
            return remembered[1]
        try:
            answer = super().resolve(qname, rdtype, rdclass, tcp, source, raise_on_no_answer, source_port, lifetime,
                                     search)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as missing:
            self._remember(key, now + _remembered_for(missing),
                           _Missing(type(missing), dict(missing.kwargs)))
            raise
        until = answer.expiration if answer.rrset is not None else min(answer.expiration, now + _MISSING_SECONDS)
        self._remember(key, until, answer)
        return answer

    def _remember(self, key: tuple[object, ...], until: float, what: dns.resolver.Answer | _Missing) -> None:
        """Under a lock: the authentication threads remember at once, and a dict must not change
        while one of them walks it to forget."""
        now = time.time()
        if until <= now:
            return
        with self._forgetting:
            if len(self._answers) >= _CACHE_ENTRIES:
                for stale in [k for k, (expires, _) in self._answers.items() if expires <= now]:
                    del self._answers[stale]
                for old in list(itertools.islice(self._answers, len(self._answers) // 2)):
                    del self._answers[old]
            self._answers[key] = (until, what)


@dataclass(frozen=True)
class _Missing:
    """A name or record that does not exist, as dnspython reported it: raised anew each time."""

    kind: type[dns.exception.DNSException]
    arguments: dict[str, Any]


def _remembered_for(missing: dns.exception.DNSException) -> float:
    """How long a missing name or record may be remembered: the zone's negative TTL (RFC 2308:
    the SOA's TTL or its minimum, whichever is less), at most a minute, and a minute where the
    answer carries no SOA (dnspython's own cache keeps those for five)."""
    responses = (missing.kwargs.get("responses") or {}).values() if isinstance(missing, dns.resolver.NXDOMAIN) \
        else [missing.kwargs.get("response")]
    return min([_MISSING_SECONDS, *(float(min(rrset.ttl, rrset[0].minimum)) for response in responses
                                    if response is not None for rrset in response.authority
                                    if rrset.rdtype == dns.rdatatype.SOA and len(rrset))])


def fresh_resolver() -> dns.resolver.Resolver:
    """The default resolver's servers without its cache, for monitors that must see a changed
    record as soon as the servers do."""
    configured = dns.resolver.get_default_resolver()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = configured.nameservers, configured.port, _DNS_TIMEOUT
    return resolver


def _resolver(nameservers: list[tuple[str, int]], kind: type[dns.resolver.Resolver]) -> dns.resolver.Resolver:
    if not nameservers:
        return kind()  # the system's, from resolv.conf
    resolver = kind(configure=False)
    resolver.nameservers = [host for host, _ in nameservers]
    resolver.port = nameservers[0][1]
    resolver.lifetime = _DNS_TIMEOUT
    return resolver


def verify(raw: bytes, mail_from: str, client_ip: str, helo: str, from_address: str) -> Verdict:
    from_domain = from_address.rpartition("@")[2].lower().rstrip(".")
    spf_result, spf_domain = _spf(mail_from, client_ip, helo)
    signatures = _dkim(raw)
    dmarc, policy = _dmarc(from_domain, spf_result, spf_domain, signatures)
    return Verdict(spf_result, spf_domain, signatures, dmarc, policy, from_domain)


def _spf(mail_from: str, client_ip: str, helo: str) -> tuple[str, str]:
    sender = mail_from or f"postmaster@{helo}"
    domain = sender.rpartition("@")[2].lower()
    try:
        result, _ = spf.check2(i=client_ip, s=sender, h=helo, timeout=_DNS_TIMEOUT, querytime=_DNS_TIMEOUT)
    except Exception:  # pyspf raises on malformed input it should have judged
        return "permerror", domain
    return str(result), domain


def _dkim(raw: bytes) -> tuple[tuple[str, str], ...]:
    """The first MAX_DKIM_SIGNATURES signatures' results; any beyond are not tried, nor reported."""
    results = []
    for index, field in enumerate(_SIGNATURE.findall(raw.split(b"\r\n\r\n", 1)[0])[:MAX_DKIM_SIGNATURES]):
        if len(field) > MAX_SIGNATURE_BYTES:
            domain = _SIGNING_DOMAIN.search(field.partition(b":")[2])
            results.append(("permerror", domain[1].decode("ascii", "replace").lower() if domain else ""))
            continue
        checker = dkim.DKIM(raw, timeout=_DNS_TIMEOUT)
        try:
            result = "pass" if checker.verify(idx=index) else "fail"
        except (dkim.DnsTimeoutError, dns.exception.DNSException):
            result = "temperror"
        except dkim.ValidationError:
            result = "fail"  # a body or header hash that does not match
        except Exception:  # a signature dkimpy cannot even read
            result = "permerror"
        results.append((result, (checker.domain or b"").decode("ascii", "replace").lower()))
    return tuple(results)


def _dmarc(from_domain: str, spf_result: str, spf_domain: str,
           signatures: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    if not from_domain:
        return "none", ""
    organisational = organisational_domain(from_domain)
    try:
        record = dmarc_record(from_domain) or (dmarc_record(organisational) if organisational != from_domain
                                                 else None)
    except dns.exception.DNSException:
        return "temperror", ""
    if record is None:
        return "none", ""
    policy = record.get("p", "none")

    def aligned(domain: str, mode: str) -> bool:
        if mode == "s":
            return domain == from_domain
        return (_PSL.privatesuffix(domain) or domain) == organisational

    if spf_result == "pass" and aligned(spf_domain, record.get("aspf", "r")):
        return "pass", policy
    if any(result == "pass" and aligned(domain, record.get("adkim", "r")) for result, domain in signatures):
        return "pass", policy
    return "fail", policy


def organisational_domain(domain: str) -> str:
    """The registrable domain (public suffix list), which DMARC's relaxed alignment compares."""
    return _PSL.privatesuffix(domain) or domain


def dmarc_lookup(domain: str, resolver: dns.resolver.Resolver | None = None) -> Record | None:
    """The DMARC record published at ``_dmarc.<domain>``, read by the RFC 7489 grammar; None
    when there is none. Several records are an error (6.6.3: receivers then ignore them all).
    ``resolver``: the monitors' own (``fresh_resolver``), past the daemon's memory."""
    try:
        answer = (resolver or dns.resolver.get_default_resolver()).resolve(f"_dmarc.{domain}", "TXT",
                                                                            lifetime=_DNS_TIMEOUT)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    texts = [b"".join(rdata.strings).decode("ascii", "replace") for rdata in answer]
    records = [text for text in texts if is_dmarc(text)]
    if not records:
        return None
    if len(records) > 1:
        return Record(errors=(f"{len(records)} DMARC records (receivers ignore them all)",))
    return parse_record(records[0])


def dmarc_record(domain: str) -> dict[str, str] | None:
    """The DMARC tags a receiver applies for ``domain``, lowercased; None when there is no
    usable record (see ``Record.applied`` for what a flawed record gives)."""
    record = dmarc_lookup(domain)
    return record.applied() if record is not None else None
