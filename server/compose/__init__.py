"""Compose: email templates and (later) rendering them for a contact."""
