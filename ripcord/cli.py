"""The `ripcord` command: one entry point for every process of the kit."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """\
usage: ripcord COMMAND [ARGS...]

commands:
  flagd start ...   run the flag daemon (see `ripcord flagd start --help`)
  flagd hash-token  print a token-file line for an admin token
  flags ...         inspect and change flags through the admin API (`ripcord flags --help`)
  flags cleanup-tickets
                    write the flag cleanup tickets (Markdown or JSON) from inventory + audit
  router serve ...  run the payment router (see `ripcord router serve --help`)
  fx-sim            run the FX rate provider simulator (`ripcord fx-sim --help`)
  migrate status|expand|backfill|contract|rollback
                    the expand-contract migration of payment_transactions.fx_rate_snapshot
  experiment judge  judge the DCC experiment from Prometheus (`ripcord experiment judge --help`)
  canary run|promote|abort|status
                    walk the Rollout's steps on the release flag, gated by the AnalysisTemplate
  demo              the release rehearsal: canary passes, rollback, flip, verdict, report
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the sub-command's own parser."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    if command == "flagd":
        from flagd.cli import main as flagd_main

        return flagd_main(rest, prog="ripcord flagd")
    if command == "flags" and rest[:1] == ["cleanup-tickets"]:
        from ripcord.cleanup_tickets import main as tickets_main

        return tickets_main(rest[1:], prog="ripcord flags cleanup-tickets")
    if command == "flags":
        from ripcord.flags_cli import main as flags_main

        return flags_main(rest)
    if command == "fx-sim":
        from router.fxsim import main as fxsim_main

        return fxsim_main(rest, prog="ripcord fx-sim")
    if command == "router":
        from router.cli import main as router_main

        return router_main(rest, prog="ripcord router")
    if command == "migrate":
        from router.migrate import main as migrate_main

        return migrate_main(rest, prog="ripcord migrate")
    if command == "canary":
        from canary.cli import main as canary_main

        return canary_main(rest, prog="ripcord canary")
    if command == "experiment":
        from canary.experiment_cli import main as experiment_main

        return experiment_main(rest, prog="ripcord experiment")
    if command == "demo":
        from ripcord.demo import main as demo_main

        return demo_main(rest)
    print(f"ripcord: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
