"""Deliverability monitors: periodic checks and report parsers that export metrics.

``dns_checks`` (SPF, DKIM, DMARC, PTR, MX of every sending domain), ``dmarc_reports``
(aggregate reports, RFC 7489) and ``bounces`` (RFC 3464 and the rest). Monitors observe and
count; deciding what is alarming is Prometheus's job, with the rules in ``monitors/prometheus``.
"""
