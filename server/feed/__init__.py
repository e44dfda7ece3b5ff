"""The Live Feed: one row per thing that happened, read by cursor or as Server-Sent Events."""
