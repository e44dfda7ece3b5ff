"""Outbox machinery shared by the email dispatcher and the CRM sync: claims with leases."""
