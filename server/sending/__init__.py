"""Sending: scheduled sends, the dispatcher, pacing, the header builder and the providers."""
