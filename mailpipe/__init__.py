"""mailpipe: support-mail and deliverability daemon."""

__version__ = "0.1.0"
