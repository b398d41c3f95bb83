"""The outbound path: what happens to an agent's reply between submission and the recipient's MX.

``stamp`` (owner and phone footer, internal headers and subject tags removed), ``dkim``
(signing, the last change made to a message), ``classify`` (every remote reply by provider
and class), ``send`` (MX or smarthost, TLS, per-reply outcomes), ``dsn`` (RFC 3464 reports to
the agent) and ``submission`` (the stages a reply goes through, in one table). Stamping and
classifying are pure functions; only ``send`` touches the network.
"""
