"""The task queue (Command Center)."""
