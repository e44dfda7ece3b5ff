"""The JSON API: one operation table that validates, serialises and describes every endpoint."""
