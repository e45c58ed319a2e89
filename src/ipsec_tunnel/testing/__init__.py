"""Fakes and helpers for tests: in-memory devices, network namespaces."""
