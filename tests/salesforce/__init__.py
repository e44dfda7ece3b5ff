"""Salesforce sync tests (issue 7)."""
