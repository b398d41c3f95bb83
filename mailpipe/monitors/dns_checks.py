"""What the world's DNS says about a sending domain, checked the way receivers check it.

Three layers per check, after checkdmarc: a DNS query, a pure parse, and a check that never
raises and returns a ``Check`` — ok or not, what was found, and the record to publish when it
fails. SPF is evaluated by pyspf itself (the same code receivers run), from an address nothing
authorises, so that every term is followed and its DNS lookups counted (RFC 7208 4.6.4 allows
10). DKIM compares each configured selector's published key with the private key mailpipe
signs with. DMARC uses the same record reader as inbound verification, the
RFC 7489 grammar of ``mailpipe.dmarc_record``. PTR must resolve
forward to the same address (FCrDNS), as Gmail and Yahoo require.

Names: ``spf.record``, ``spf.syntax``, ``spf.lookups``, ``spf.all``, ``spf.authorized.<ip>``,
``spf.helo.record``, ``spf.helo.authorized.<ip>`` (the EHLO name, for null-sender mail),
``dkim.<selector>``, ``dkim.configured``, ``dmarc.record``, ``dmarc.syntax``, ``dmarc.policy``, ``dmarc.rua``,
``dmarc.alignment``, ``ptr.<ip>``, ``mx``, ``soa``. When the DNS servers themselves do not answer,
none of these can run: ``check_domain`` then returns the one check ``dns.server``, naming the
servers, after one short probe instead of a timeout per check. ``not_public`` names the domains
(localhost, .local, .invalid) that no receiver looks up, which the monitors skip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.resolver
import dns.reversename
import spf

from mailpipe import auth
from mailpipe.keys import SigningKey

_UNAUTHORISED_PROBE = "192.0.2.255"  # TEST-NET-1: no SPF record should authorise it
_MAX_LOOKUPS = 10
_PROBE_SECONDS = 3.0
_KEY_TAG = re.compile(r"(?:^|;)\s*p\s*=\s*([^;]*)", re.IGNORECASE)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Report:
    domain: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_json(self) -> dict[str, object]:
        return {"domain": self.domain, "ok": self.ok,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix} for c in self.checks]}


TxtLookup = Callable[[str], list[str]]


def check_domain(domain: str, *, sending_ips: Sequence[str], keys: Sequence[SigningKey], helo: str,
                 resolver: dns.resolver.Resolver | None = None) -> Report:
    resolver = resolver or dns.resolver.get_default_resolver()
    domain = domain.lower().rstrip(".")
    if silent := unanswered(domain, resolver):
        return Report(domain, (Check("dns.server", False, silent, "start the DNS server, or name one that answers:"
                                     " [auth] nameservers, doctor --nameserver HOST:PORT, /etc/resolv.conf"),))
    checks = [*spf_checks(domain, sending_ips, resolver), *dkim_checks(domain, keys, resolver),
              *dmarc_checks(domain, keys, sending_ips, resolver)]
    checks += helo_checks(helo, sending_ips, resolver)
    checks += [ptr_check(ip, helo, resolver) for ip in sending_ips]
    checks += [mx_check(domain, resolver), soa_check(domain, resolver)]
    return Report(domain, tuple(checks))


def not_public(domain: str) -> bool:
    """Special-use names (RFC 6761) no receiver looks up: nothing there to check or to publish."""
    name = domain.lower().rstrip(".")
    return name == "localhost" or name.endswith((".localhost", ".local", ".invalid")) or "." not in name


def servers(resolver: dns.resolver.Resolver) -> str:
    return ", ".join(f"{ns}:{resolver.port}" for ns in resolver.nameservers) or "(none configured)"


def unanswered(domain: str, resolver: dns.resolver.Resolver) -> str:
    """Why no check can run: the DNS servers give no answer at all (not even NXDOMAIN), else "".
    One query with a short lifetime, so a dead server costs seconds, not a timeout per check."""
    probe = dns.resolver.Resolver(configure=False)
    probe.nameservers, probe.port = resolver.nameservers, resolver.port
    probe.lifetime = min(resolver.lifetime, _PROBE_SECONDS)
    try:
        probe.resolve(domain, "SOA")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return ""
    except dns.exception.Timeout:
        return f"the DNS server {servers(resolver)} did not answer within {probe.lifetime:g} s"
    except dns.resolver.NoNameservers as exc:
        errors = exc.kwargs.get("errors") or []
        network = [error for error in errors if isinstance(error[3], OSError)]
        if errors and len(network) == len(errors):
            return f"the DNS server {servers(resolver)} cannot be reached: {network[0][3]}"
    except dns.exception.DNSException:
        return ""
    return ""


def txt(resolver: dns.resolver.Resolver, name: str) -> list[str] | None:
    """The TXT strings at ``name`` (each record's strings joined); [] when there are none,
    None when DNS did not answer."""
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException:
        return None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def spf_checks(domain: str, sending_ips: Sequence[str], resolver: dns.resolver.Resolver) -> list[Check]:
    suggestion = f'{domain}. IN TXT "v=spf1 {" ".join(_ip_term(ip) for ip in sending_ips) or "mx"} -all"'
    records = txt(resolver, domain)
    if records is None:
        return [Check("spf.record", False, f"no answer from DNS for TXT {domain}", "check the domain's name servers")]
    spf_records = [r for r in records if r.lower().startswith("v=spf1")]
    if len(spf_records) != 1:
        found = "no SPF record" if not spf_records else f"{len(spf_records)} SPF records (receivers permerror)"
        return [Check("spf.record", False, found, f"publish exactly one: {suggestion}")]
    record = spf_records[0]
    checks = [Check("spf.record", True, record)]
    query = spf.query(i=_UNAUTHORISED_PROBE, s=f"postmaster@{domain}", h=domain, strict=False)
    result, _, explanation = query.check()
    broken = query.perm_error if query.perm_error is not None else (explanation if result == "permerror" else None)
    checks.append(Check("spf.syntax", broken is None, f"pyspf: {broken}" if broken else "valid",
                        "" if broken is None else f"correct the record, e.g. {suggestion}"))
    checks.append(Check("spf.lookups", query.lookups <= _MAX_LOOKUPS,
                        f"{query.lookups} DNS-querying terms (limit {_MAX_LOOKUPS})",
                        "" if query.lookups <= _MAX_LOOKUPS else
                        "replace include:/a/mx terms by the ip4:/ip6: ranges they stand for"))
    final = record.split()[-1].lower()
    permissive = final in ("+all", "all", "?all")
    checks.append(Check("spf.all", not permissive, f"ends with {final}",
                        f"end the record with -all or ~all: {suggestion}" if permissive else ""))
    for ip in sending_ips:
        verdict, _, _ = spf.query(i=ip, s=f"postmaster@{domain}", h=domain).check()
        checks.append(Check(f"spf.authorized.{ip}", verdict == "pass", f"{ip}: {verdict}",
                            "" if verdict == "pass" else f"add {_ip_term(ip)} to the record: {suggestion}"))
    return checks


def helo_checks(helo: str, sending_ips: Sequence[str], resolver: dns.resolver.Resolver) -> list[Check]:
    """SPF of the EHLO name: with a null sender (acknowledgements, notices) receivers check SPF
    for postmaster@<EHLO name> (RFC 7208 2.3, 2.4), so that name needs a record of its own."""
    helo = helo.lower().rstrip(".")
    suggestion = f'{helo}. IN TXT "v=spf1 {" ".join(_ip_term(ip) for ip in sending_ips) or "a"} -all"'
    if "." not in helo:
        return [Check("spf.helo.record", False, f"EHLO name {helo!r} is not a domain: null-sender mail fails SPF",
                      "set outbound.hostname to the sending host's public name")]
    records = txt(resolver, helo)
    if records is None:
        return [Check("spf.helo.record", False, f"no answer from DNS for TXT {helo}", "check the name servers")]
    found = [r for r in records if r.lower().startswith("v=spf1")]
    if len(found) != 1:
        detail = f"no SPF record for the EHLO name {helo}" if not found else f"{len(found)} SPF records at {helo}"
        return [Check("spf.helo.record", False, detail + " (null-sender mail is checked against it)",
                      f"publish exactly one: {suggestion}")]
    checks = [Check("spf.helo.record", True, f"{helo}: {found[0]}")]
    for ip in sending_ips:
        verdict, _, _ = spf.query(i=ip, s=f"postmaster@{helo}", h=helo).check()
        checks.append(Check(f"spf.helo.authorized.{ip}", verdict == "pass", f"{helo} from {ip}: {verdict}",
                            "" if verdict == "pass" else f"add {_ip_term(ip)} to the record: {suggestion}"))
    return checks


def dkim_checks(domain: str, keys: Sequence[SigningKey], resolver: dns.resolver.Resolver) -> list[Check]:
    own = [key for key in keys if key.domain == domain]
    if not own:
        return [Check("dkim.configured", False, "no DKIM key: mail from this domain goes out unsigned",
                      f"mailpipe dkim keygen --domain {domain} --selector s1 (then add the [[dkim]] it prints)")]
    checks = [Check("dkim.configured", True, ", ".join(f"{k.selector} ({k.algorithm})" for k in own))]
    for key in own:
        name = f"{key.selector}._domainkey.{domain}"
        wanted = key.public_record()
        published = txt(resolver, name)
        if published is None:
            checks.append(Check(f"dkim.{key.selector}", False, f"no answer from DNS for TXT {name}",
                                "check the domain's name servers"))
            continue
        found = [_key_of(record) for record in published if _key_of(record)]
        strength = "" if key.bits >= 2048 or key.algorithm != "rsa-sha256" else f"; {key.bits}-bit (2048 recommended)"
        ok = _key_of(wanted) in found
        detail = (f"published key matches ({key.bits} bits){strength}" if ok else
                  "no key published" if not found else "the published key is not the key mailpipe signs with")
        checks.append(Check(f"dkim.{key.selector}", ok, detail, "" if ok else f'{name}. IN TXT "{wanted}"'))
    return checks


def dmarc_checks(domain: str, keys: Sequence[SigningKey], sending_ips: Sequence[str],
                 resolver: dns.resolver.Resolver) -> list[Check]:
    organisational = auth.organisational_domain(domain)
    suggestion = f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{organisational}"'
    try:
        record = auth.dmarc_lookup(domain, resolver) or (auth.dmarc_lookup(organisational, resolver)
                                                         if organisational != domain else None)
    except dns.exception.DNSException as exc:
        return [Check("dmarc.record", False, f"no answer from DNS: {exc}", "check the domain's name servers")]
    if record is None:
        return [Check("dmarc.record", False, "no DMARC record", f"publish {suggestion}")]
    tags = record.tags
    policy = tags.get("p", "")
    rua = bool(tags.get("rua")) and "rua" not in record.invalid
    checks = [Check("dmarc.record", True, "; ".join(f"{k}={v}" for k, v in tags.items()) or "(unreadable)"),
              Check("dmarc.syntax", record.valid, "valid (RFC 7489)" if record.valid else "; ".join(record.errors),
                    "" if record.valid else f"correct the record, e.g. {suggestion}"),
              Check("dmarc.policy", policy in ("none", "quarantine", "reject"), f"p={policy or '(missing)'}",
                    "" if policy in ("none", "quarantine", "reject") else f"publish {suggestion}"),
              Check("dmarc.rua", rua, tags["rua"] if rua else f"rua={tags['rua']} is not a URI: no aggregate reports"
                    if tags.get("rua") else "no rua: no aggregate reports",
                    "" if rua else f"add rua=mailto:dmarc-reports@{organisational}")]
    signing = [k.domain for k in keys if auth.organisational_domain(k.domain) == organisational]
    dkim_aligned = any(d == domain or tags.get("adkim", "r") == "r" for d in signing)
    ways = ["DKIM d=" + ",".join(sorted(set(signing)))] if dkim_aligned else []
    if sending_ips:
        ways.append("SPF of the envelope sender's domain (same as From)")
    checks.append(Check("dmarc.alignment", bool(ways), "aligned through " + " and ".join(ways) if ways else
                        "nothing mailpipe sends can align: no DKIM key for this domain and no sending IPs known",
                        "" if ways else f"mailpipe dkim keygen --domain {domain} --selector s1"))
    return checks


def ptr_check(ip: str, helo: str, resolver: dns.resolver.Resolver) -> Check:
    fix = f"have the owner of {ip} set its PTR to {helo}, and publish {helo}. IN {_family(ip)} {ip}"
    try:
        names = [str(r.target).rstrip(".").lower() for r in resolver.resolve(dns.reversename.from_address(ip), "PTR")]
    except dns.exception.DNSException:
        return Check(f"ptr.{ip}", False, f"{ip} has no PTR record", fix)
    for name in names:
        try:
            forward = {r.to_text() for r in resolver.resolve(name, _family(ip))}
        except dns.exception.DNSException:
            continue
        if ip in forward:
            note = "" if name == helo.lower() else f" (EHLO name is {helo})"
            return Check(f"ptr.{ip}", True, f"{ip} -> {name} -> {ip}{note}")
    return Check(f"ptr.{ip}", False, f"{ip} -> {', '.join(names)}, which does not resolve back to {ip}", fix)


def mx_check(domain: str, resolver: dns.resolver.Resolver) -> Check:
    fix = f"{domain}. IN MX 10 <your inbound mail host>."
    try:
        records = sorted(resolver.resolve(domain, "MX"), key=lambda r: r.preference)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return Check("mx", False, "no MX record: replies and bounces to this domain go nowhere reliable", fix)
    except dns.exception.DNSException as exc:
        return Check("mx", False, f"no answer from DNS: {exc}", "check the domain's name servers")
    hosts = [str(r.exchange).rstrip(".") or "." for r in records]
    if hosts == ["."]:
        return Check("mx", False, "null MX: the domain accepts no mail, yet sends it (replies bounce)", fix)
    return Check("mx", True, ", ".join(hosts))


def soa_check(domain: str, resolver: dns.resolver.Resolver) -> Check:
    """Yahoo decides whether a MAIL FROM or From domain exists by an SOA query at that very
    name, so a subdomain with only A or MX records is refused as "unresolvable"."""
    fix = f"make {domain} a zone of its own (SOA and NS records), or send from a domain that is one"
    try:
        answer = resolver.resolve(domain, "SOA")
    except dns.resolver.NXDOMAIN:
        return Check("soa", False, f"{domain} does not exist", fix)
    except dns.resolver.NoAnswer:
        return Check("soa", False, f"no SOA record at {domain} (Yahoo refuses it as unresolvable)", fix)
    except dns.exception.DNSException as exc:
        return Check("soa", False, f"no answer from DNS: {exc}", "check the domain's name servers")
    return Check("soa", True, str(answer[0].mname).rstrip("."))


def _key_of(record: str) -> str:
    match = _KEY_TAG.search(record)
    return "".join(match[1].split()) if match else ""


def _family(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


def _ip_term(ip: str) -> str:
    return f"ip6:{ip}" if ":" in ip else f"ip4:{ip}"
