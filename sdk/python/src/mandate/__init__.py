"""Mandate SDK for Python."""
