"""The outbound path: what happens to an agent's reply between submission and the recipient's MX.

``replies`` (the submission queue's stages, in one table: parse → thread → guard → stamp →
sign), ``footer`` (the owner and phone template), ``stamp`` (that footer in every body part,
internal headers and subject tags removed), ``signing`` (DKIM, the last change made to a
message: dkimpy's DKIM with OpenSSL's signatures; the keys are ``mailpipe.keys``),
``acknowledge`` (the automatic first response when a case opens), ``queue`` (the send queue's
hand-off: one attempt, then each recipient's fate), ``send`` (MX or smarthost, TLS, per-reply
outcomes), ``classify`` (every remote reply by provider and class, from the reply catalog) and
``dsn`` (RFC 3464 reports to the agent). Stamping and classifying are pure functions; only
``send`` touches the network.
"""
