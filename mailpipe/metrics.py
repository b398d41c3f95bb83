"""Every Prometheus metric mailpipe exports, with its help text, in one registry.

Names follow Prometheus conventions: ``mailpipe_`` prefix, base units (seconds, bytes),
``_total`` on counters (prometheus-client appends it), and only bounded labels — listener,
state, result, reply code — never addresses or message ids. Creating ``Metrics`` registers
nothing globally; the daemon makes one and hands it to the parts that count.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from mailpipe import __version__
from mailpipe.thread_cpu import ThreadCPU

disable_created_metrics()

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
_RESPONSE_BUCKETS = (60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 86400, 2 * 86400, 5 * 86400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Gauge("mailpipe_build_info", "Always 1; labelled with the running version.",
                                ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        r.register(ThreadCPU())
        self.connections = Counter(
            "mailpipe_smtp_connections", "SMTP connections by listener and outcome "
            "(accepted, or refused because a connection limit was reached).", ["listener", "result"], registry=r)
        self.sessions = Gauge("mailpipe_smtp_sessions", "SMTP sessions open now.", ["listener"], registry=r)
        self.messages = Counter(
            "mailpipe_smtp_messages", "Messages at end of DATA by listener and result "
            "(queued, rejected, failed).", ["listener", "result"], registry=r)
        self.received_bytes = Counter("mailpipe_smtp_received_bytes", "Bytes of message data queued.",
                                      ["listener"], registry=r)
        self.replies = Counter("mailpipe_smtp_replies", "SMTP replies sent, by listener and reply code.",
                               ["listener", "code"], registry=r)
        self.accept_seconds = Histogram(
            "mailpipe_smtp_accept_seconds", "Time from end of DATA to the 250 reply, which includes "
            "the durable spool write.", ["listener"], buckets=_LATENCY_BUCKETS, registry=r)
        self.spool_messages = Gauge("mailpipe_spool_messages", "Messages in the spool by queue and state.",
                                    ["queue", "state"], registry=r)
        self.spool_oldest = Gauge(
            "mailpipe_spool_oldest_message_age_seconds", "Age of the oldest message by queue and state.",
            ["queue", "state"], registry=r)
        self.spool_commits = Counter("mailpipe_spool_commits", "Spool transactions (each one fsync).",
                                     ["queue"], registry=r)
        self.spool_operations = Counter(
            "mailpipe_spool_operations", "Spool operations; divided by commits it is the group-commit factor.",
            ["queue"], registry=r)
        self.handoffs = Counter(
            "mailpipe_handoffs", "Hand-offs of spooled messages to the next hop by result "
            "(delivered, refused, deferred, held, consumed, quarantined).", ["queue", "result"], registry=r)
        self.handoff_seconds = Histogram(
            "mailpipe_handoff_seconds", "Time from the 250 to the next hop accepting the message.",
            ["queue"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram(
            "mailpipe_stage_seconds", "Time each pipeline stage takes per message.", ["queue", "stage"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.cases_opened = Counter("mailpipe_cases_opened", "Cases opened, by urgency level.", ["level"], registry=r)
        self.corrections = Counter(
            "mailpipe_triage_corrections", "Agents' corrections of a case's urgency, from the level triage gave to "
            "the one the agent gave: the desk's live precision.", ["from", "to"], registry=r)
        self.model_examples = Gauge("mailpipe_urgency_model_examples",
                                    "Labelled messages the running urgency model was trained on.", registry=r)
        self.model_trained = Gauge("mailpipe_urgency_model_trained_timestamp_seconds",
                                   "When the running urgency model was trained.", registry=r)
        self.urgency_reads = Counter(
            "mailpipe_urgency_reads", "Messages the urgency model read, in its own process or (while that "
            "starts, loads a newer model or is started again, or when it did not answer) in the daemon's.",
            ["process"], registry=r)
        self.urgency_reader_up = Gauge(
            "mailpipe_urgency_reader_up", "1 while the urgency model's own process holds the running model and "
            "reads the mail; 0 while it starts, loads a newer model or is started again, or with the model off.",
            registry=r)
        self.urgency_reader_starts = Counter(
            "mailpipe_urgency_reader_starts", "Starts of the urgency model's own process; more than one per "
            "daemon start means it died and was started again.", registry=r)
        self.cases_open = Gauge("mailpipe_cases_open", "Open (unanswered) cases by urgency level.", ["level"],
                                registry=r)
        self.case_oldest_open = Gauge(
            "mailpipe_case_oldest_open_age_seconds", "Age of the oldest open (unanswered) case by urgency level.",
            ["level"], registry=r)
        self.assignments = Counter(
            "mailpipe_assignments", "Assignments by the agent's tier and the kind of reason "
            "(sticky, least_loaded, cover, escalation).", ["tier", "reason"], registry=r)
        self.outbound_replies = Counter(
            "mailpipe_outbound_replies", "Replies of remote mail servers to our outbound mail, per recipient, by "
            "provider (recognised from the MX host) and class (accepted, authentication, reputation, content, "
            "recipient, policy, other, unknown = a text the catalog does not know from a known provider).",
            ["provider", "class"], registry=r)
        self.outbound_deferrals = Counter(
            "mailpipe_outbound_deferrals", "Temporary (4xx) refusals of our outbound mail, per recipient, by provider "
            "and class: a rise is the first sign of throttling.", ["provider", "class"], registry=r)
        self.outbound_connection_failures = Counter(
            "mailpipe_outbound_connection_failures", "Delivery attempts in which no mail server of the "
            "destination could be reached, by provider.", ["provider"], registry=r)
        self.outbound_delivery_seconds = Histogram(
            "mailpipe_outbound_delivery_seconds", "Time from entering the send queue to a remote server "
            "accepting the message, by provider.", ["provider"], buckets=_DELIVERY_BUCKETS, registry=r)
        self.outbound_dsns = Counter("mailpipe_outbound_dsns", "Delivery status notifications sent to agents, by "
                                     "action (failed).", ["action"], registry=r)
        self.first_response_seconds = Histogram(
            "mailpipe_case_first_response_seconds", "Time from a case opening to its first reply accepted by the "
            "customer's side, by urgency level.",
            ["level"], buckets=_RESPONSE_BUCKETS, registry=r)
        self.replies_held = Counter("mailpipe_replies_held", "Replies held by the double-reply guard.", registry=r)
        self.assignment_fallbacks = Counter(
            "mailpipe_assignment_fallbacks", "Assignments that fell back because nobody was on duty where they "
            "should go, by kind (escalation: to the lead, an off-duty agent or nobody; cover: an away owner's mail "
            "to the lead or left with the owner).", ["kind"], registry=r)
        self.reply_fates = Counter(
            "mailpipe_reply_fates", "Agents' replies in cases by what became of them (queued, held, sent: accepted "
            "by the customer's side, deferred, bounced, deleted).", ["fate"], registry=r)
        self.submission_auth = Counter(
            "mailpipe_submission_auth", "SMTP AUTH attempts on submission by result (success, failure, locked, busy).",
            ["result"], registry=r)
        self.autoreplies = Counter(
            "mailpipe_autoreplies", "Automatic acknowledgements of new cases by result (queued, or the reason "
            "one was not sent: automatic, list, bounce, noreply, ours, unauthenticated, recent, disabled).",
            ["result"], registry=r)
        self.dns_check_ok = Gauge(
            "mailpipe_dns_check_ok", "1 when a DNS authentication check of a sending domain passes, 0 when it fails "
            "(spf.*, dkim.*, dmarc.*, ptr.<ip>, mx; `mailpipe doctor DOMAIN` shows the fix).", ["domain", "check"],
            registry=r)
        self.dns_checks_last_run = Gauge("mailpipe_dns_checks_last_run_timestamp_seconds",
                                         "When the DNS checks last completed.", registry=r)
        self.provider_requirement_ok = Gauge(
            "mailpipe_provider_requirement_ok", "1 when a provider's published requirement is met by every sending "
            "domain, 0 when not (absent while unknown), from monitors/providers/*.toml.", ["provider", "requirement"],
            registry=r)
        self.provider_requirement_unknown = Gauge(
            "mailpipe_provider_requirement_unknown", "1 while a provider's requirement cannot be judged: data mailpipe "
            "does not see (e.g. the spam rate, only in Postmaster Tools) or no traffic yet; `mailpipe doctor DOMAIN "
            "--provider P` names what would supply it.", ["provider", "requirement"], registry=r)
        self.bounces = Counter(
            "mailpipe_bounces", "Bounces of our mail received later (RFC 3464 or plain text), per failed recipient, "
            "by provider and class (as for mailpipe_outbound_replies_total).", ["provider", "class"], registry=r)
        self.bounces_unmatched = Counter(
            "mailpipe_bounces_unmatched", "Bounces that name no mail mailpipe sent (forged or misdirected): "
            "logged and otherwise ignored.", registry=r)
        self.probe_placements = Counter(
            "mailpipe_probe_placements", "Placement probes by provider and where they landed (inbox, spam, missing).",
            ["provider", "result"], registry=r)
        self.probe_last_placement = Gauge(
            "mailpipe_probe_last_placement", "1 for where the latest probe to a provider landed (inbox, spam or "
            "missing), 0 for the others.", ["provider", "result"], registry=r)
        self.probe_delivery_seconds = Histogram(
            "mailpipe_probe_delivery_seconds", "From sending a probe to finding it in the seed mailbox.", ["provider"],
            buckets=_DELIVERY_BUCKETS, registry=r)
        self.probe_auth_pass = Gauge(
            "mailpipe_probe_auth_pass", "1 when the provider's own Authentication-Results on the latest probe say "
            "pass for the method (spf, dkim, dmarc), 0 otherwise.", ["provider", "method"], registry=r)
        self.probe_login_ok = Gauge(
            "mailpipe_probe_login_ok", "1 when the latest login to a provider's seed mailbox succeeded, 0 when it "
            "failed (see mailpipe_probe_login_failures_total for why).", ["provider"], registry=r)
        self.probe_login_failures = Counter(
            "mailpipe_probe_login_failures", "Failed logins to seed mailboxes by provider and reason (expired_grant, "
            "wrong_scope, bad_client, token_endpoint, token_rejected, bad_password).", ["provider", "reason"],
            registry=r)
        self.incident_active = Gauge(
            "mailpipe_incident_active", "1 while a provider is refusing our mail for authentication, reputation, "
            "policy or content (an incident; see mailpipe incidents).", ["provider"], registry=r)
        self.incidents_opened = Counter("mailpipe_incidents_opened", "Provider incidents opened.", ["provider"],
                                        registry=r)
        self.dmarc_reports = Counter(
            "mailpipe_dmarc_reports", "DMARC aggregate reports received by mail, by result (new, duplicate, invalid).",
            ["result"], registry=r)
        self.dmarc_messages = Gauge(
            "mailpipe_dmarc_messages", "Messages in DMARC aggregate reports of the last 7 days, by reporter and source "
            "IP (the 20 largest sources per reporter; the rest as source_ip=\"other\").", ["reporter", "source_ip"],
            registry=r)
        self.dmarc_pass_ratio = Gauge(
            "mailpipe_dmarc_pass_ratio", "Share of those messages that passed DMARC (aligned DKIM or SPF).",
            ["reporter", "source_ip"], registry=r)
        self.dmarc_dkim_aligned_ratio = Gauge(
            "mailpipe_dmarc_dkim_aligned_ratio", "Share of those messages with aligned, passing DKIM.",
            ["reporter", "source_ip"], registry=r)
        self.dmarc_spf_aligned_ratio = Gauge(
            "mailpipe_dmarc_spf_aligned_ratio", "Share of those messages with aligned, passing SPF.",
            ["reporter", "source_ip"], registry=r)
        self.store_up = Gauge("mailpipe_store_up", "1 while the store (SQLite or PostgreSQL) answers; at 0, mail "
                              "waits in the spool to be triaged.", registry=r)
        self.spool_up = Gauge("mailpipe_spool_up", "1 while the spool file takes writes and reads back whole; at 0, "
                              "intake answers 4xx and delivery waits.", ["spool"], registry=r)
        self.storage_fault = Gauge("mailpipe_worker_storage_fault", "1 while a queue's worker defers mail because "
                                   "the spool, the store or a disk fails under it.", ["queue", "storage"], registry=r)
        self.config_reloads = Counter("mailpipe_config_reloads", "Configuration reloads by result.",
                                      ["result"], registry=r)
        self.part_restarts = Counter(
            "mailpipe_part_restarts", "Parts of the daemon (a queue's worker, the monitors, the probes, the "
            "digest) that failed and were started again; the journal has the traceback.", ["part"], registry=r)
        self.config_last_reload = Gauge(
            "mailpipe_config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded.", registry=r)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        for result in ("success", "failure", "locked", "busy"):
            self.submission_auth.labels(result)
        for kind in ("escalation", "cover"):
            self.assignment_fallbacks.labels(kind)
        for result in ("new", "duplicate", "invalid"):
            self.dmarc_reports.labels(result)
        for level in ("critical", "high", "normal", "low"):
            self.first_response_seconds.labels(level)
            self.cases_opened.labels(level)
            self.cases_open.labels(level)
            self.case_oldest_open.labels(level)
