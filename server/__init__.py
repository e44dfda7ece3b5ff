"""Relay server package (create_app lives in server.app)."""
