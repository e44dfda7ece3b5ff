"""Salesforce: the org's connection, activity settings and the sync outbox (issue 7)."""
