"""The Gmail add-on over HTTP: verified endpoints, cards, compose fill and its deployment file."""
