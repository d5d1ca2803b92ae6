"""Providers, hub models and mappings (see docs/ and the registry issue)."""
