"""Desk commands by mail: what an agent does from a mail client, with no shell.

An agent sends (forwards, redirects, or replies) a message to ``COMMAND+ARGUMENT@`` one of the
desk's support domains, logged in on the submission port; ``addresses`` reads such recipients
and refuses a malformed one at RCPT, with its usage. Only the submission listener routes them,
into the ``desk`` queue (``mailpipe.queues``); the inbound port knows no such mailbox, so a
customer can never run a command. ``route`` is the queue's stage table (parse → find the case
→ run), ``forwarded`` finds which case and customer message a command is about, and
``commands`` holds what each command does; every command answers its author with a short note
in the same thread.
"""
