"""Ripcord's Locust load test and kill-switch drill.

- `loadtest/locustfile.py`: the Locust entry point (payment users, the drill operator, the
  end-of-run reconciliation, distributed-mode messaging). Only Locust imports it.
- `loadtest.mix`: the payment request mix (currencies, cards, DCC opt-ins); pure.
- `loadtest.drill`: what a flip's observations mean (latency, late new-path requests, summary);
  pure, no Locust, no gevent, so tests and the bench use it directly.
- `loadtest.book`: which payments the load test was told about, and the reconciliation of
  those with the router's database.
- `loadtest.stack`: a real stack (daemon, FX simulator, `router serve --processes N`) for
  `python -m loadtest`, the tests and the bench.
- `loadtest.probe`: flag probes (the official OpenFeature flagd provider, RPC and in-process,
  and our `FlagClient`), each run in its own process.
"""
