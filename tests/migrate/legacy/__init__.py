"""Frozen old router code (deploy N-1) for the expand-contract tests."""
