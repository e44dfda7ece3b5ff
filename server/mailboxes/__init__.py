"""Mailboxes: connecting (OAuth, SMTP/IMAP), lifecycle, sync and detection of sent/reply/bounce."""
