"""Mail: the scheduled-send outbox (the dispatcher and transports come with sending)."""
