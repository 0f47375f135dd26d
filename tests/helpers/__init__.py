"""What several test files share: tiny models, datasets, server processes, serving and export helpers.

Tests import from here (and get fixtures from tests/conftest.py), never from another test module.
"""
