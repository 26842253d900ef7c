"""Shared pytest configuration. Fixtures used by one package's tests live in that package's conftest."""
