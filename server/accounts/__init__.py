"""Accounts: orgs, users, sign-in and API tokens."""
