"""Contacts: the people a rep adds to campaigns."""
