"""Triage: what decides where an inbound message goes and how urgent it is.

The inbound stage table is ``stages`` (route → parse → authenticate → predict → profile → score →
assign → acknowledge → annotate, over a ``work.Work``); beside it what it calls: ``rules``
(loaded from rules/, policy as data, by ``load``) with ``conditions``, ``expression`` and
``examples``, ``context`` (what a rule may look at) and ``score``, the learned urgency ``model``
(trained from ``corpus``, judged with the rules by ``evaluation``), ``assign`` (ownership and escalation, with
``hours``), and ``render`` (our header fields and the triage card). Knows nothing of SMTP.
"""
