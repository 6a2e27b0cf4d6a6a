"""The operator console and REST API."""
