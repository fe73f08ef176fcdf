"""Provider-level conformance suite (run on its own: ``.venv/bin/pytest tests/provider``)."""
