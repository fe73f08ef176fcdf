"""`flagd start …`: the daemon's command line (also `ripcord flagd start …`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from flagd.daemon import Daemon, DaemonConfig
from flagd.definitions import DefinitionError

EPILOG = """\
examples:
  flagd start --uri file:deploy/flags/payments.flagd.json
  flagd start --uri file:base.json --uri file:overrides.yaml --fractional v2
  flagd start --config launchpad.json        # upstream flagd's JSON config format

Later --uri sources win over earlier ones for the same flag set and key. Edits to a file are
live within a second; an invalid edit is rejected (see /readyz on the management port) and
the last good configuration stays in service.
"""


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser(prog: str = "flagd") -> argparse.ArgumentParser:
    """The argument parser for `start` (shared by `python -m flagd` and `ripcord flagd`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Ripcord's flagd-compatible flag daemon."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = commands.add_parser(
        "start",
        help="serve flags from one or more sources",
        description="Serve flag evaluation (gRPC), sync (gRPC) and management (HTTP).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument(
        "--uri",
        "-f",
        action="append",
        default=[],
        metavar="URI",
        help="flag source, file:PATH (JSON or YAML); repeat for several, later wins",
    )
    start.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="upstream flagd config file (sources, context-value, disable-sync-metadata)",
    )
    start.add_argument("--port", "-p", type=int, default=None, help="evaluation gRPC port (8013)")
    start.add_argument(
        "--management-port",
        "-m",
        type=int,
        default=None,
        help="HTTP /healthz /readyz /metrics port (8014)",
    )
    start.add_argument("--sync-port", "-g", type=int, default=None, help="sync gRPC port (8015)")
    start.add_argument("--host", default=None, help="address to listen on (0.0.0.0)")
    start.add_argument(
        "--fractional",
        choices=("v3", "v2"),
        default=None,
        help="fractional hash recipe: v3 (CBOR, default; matches in-process Python providers) "
        "or v2 (flagd 0.15-0.16)",
    )
    start.add_argument(
        "--context-value",
        "-X",
        action="append",
        default=[],
        type=_key_value,
        metavar="KEY=VALUE",
        help="static evaluation context added to every request",
    )
    start.add_argument(
        "--context-from-header",
        "-H",
        action="append",
        default=[],
        type=_key_value,
        metavar="HEADER=KEY",
        help="copy a request header into the evaluation context",
    )
    start.add_argument(
        "--disable-sync-metadata",
        action="store_true",
        default=None,
        help="answer GetMetadata with UNIMPLEMENTED (providers then use sync_context)",
    )
    start.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return parser


def _load_config(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object at the top level")
    return data


def config_from_args(args: argparse.Namespace) -> DaemonConfig:
    """Merge `--config` (if any) with flags; explicit flags win."""
    file_cfg: dict[str, Any] = _load_config(args.config) if args.config else {}
    uris = [str(s["uri"]) for s in file_cfg.get("sources", [])] + list(args.uri)
    for source in file_cfg.get("sources", []):
        if source.get("provider", "file") != "file":
            raise ValueError(f"--config: source provider {source.get('provider')!r} unsupported")
    static = {str(k): v for k, v in (file_cfg.get("context-value") or {}).items()}
    static.update(dict(args.context_value))
    headers = {str(k): str(v) for k, v in (file_cfg.get("context-from-header") or {}).items()}
    headers.update(dict(args.context_from_header))

    def pick(flag: Any, key: str, default: Any) -> Any:
        return flag if flag is not None else file_cfg.get(key, default)

    return DaemonConfig(
        uris=uris,
        host=pick(args.host, "host", "0.0.0.0"),
        port=int(pick(args.port, "port", 8013)),
        management_port=int(pick(args.management_port, "management-port", 8014)),
        sync_port=int(pick(args.sync_port, "sync-port", 8015)),
        fractional=pick(args.fractional, "fractional", "v3"),
        static_context=static,
        header_context=headers,
        sync_metadata=not pick(args.disable_sync_metadata, "disable-sync-metadata", False),
    )


async def _serve(config: DaemonConfig) -> int:
    daemon = Daemon(config)
    try:
        await daemon.start()
    except DefinitionError as exc:
        print(f"flagd: invalid flag source: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"flagd: {exc}", file=sys.stderr)
        return 1
    await daemon.serve_health()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("flagd").info("signal received: draining streams")
    await daemon.stop()
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "flagd") -> int:
    """Entry point; returns the process exit code."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"flagd: {exc}", file=sys.stderr)
        return 2
    if not config.uris:
        print("flagd: at least one --uri file:PATH (or --config) is required", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config))
