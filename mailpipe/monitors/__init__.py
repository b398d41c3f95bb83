"""Deliverability monitors: the periodic checks and report parsers, exporting metrics.

``runner`` (the daemon's periodic task: ``dns_checks`` of every sending domain — SPF, DKIM,
DMARC, PTR, MX — and the provider requirement ``profiles`` evaluated over them and over
``traffic``, the facts of our own accepted mail), ``probes`` (placement probes to seed
mailboxes, read back over IMAP), ``incidents`` (a provider refusing our mail now, for triage and
operators), and ``returned`` (mail that comes back: DMARC aggregate reports read by
``dmarc_reports`` and bounces read by ``bounces``, taken off the inbound queue before triage).
Monitors observe and count; deciding what is alarming is Prometheus's job, with the rules in
``monitors/prometheus``. Providers are named in ``mailpipe.providers``; monitors import from
``outbound`` (the reply catalog) but the send queue never imports a monitor: it is handed them.
"""
