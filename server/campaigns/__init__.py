"""Campaigns: steps, send options, validation, launch and planning."""
