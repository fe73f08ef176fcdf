"""Ripcord's reference payment router: legacy and new routing engines behind the kill switch.

Follow one payment top to bottom in ``router.service``; the decisions it makes are pure
functions in ``routing`` (which engine), ``engines`` (which acquirer), ``money`` (amounts)
and ``fx`` (quotes); the side effects sit at the edges: ``flags`` (the daemon's stream),
``ledger`` (the database) and ``telemetry``.
"""
