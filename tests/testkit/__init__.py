"""Helpers shared by tests in several folders (``pythonpath = ["tests"]`` in pyproject)."""
