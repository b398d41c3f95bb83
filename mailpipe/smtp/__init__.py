"""SMTP listeners: protocol limits and policy replies, never message content beyond sanity."""
