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

from flagd import auth
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
    start.add_argument(
        "--state",
        default=None,
        metavar="URL",
        help="durable admin state and audit trail: postgresql://user@host:port/db for several "
        "replicas (default: SQLite under --state-dir)",
    )
    start.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="directory of the embedded SQLite state (default .state/flagd)",
    )
    start.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="hashed admin tokens, one `sha256:<hex> <principal> <role>` per line "
        "(see `hash-token`); tokens in $RIPCORD_TOKENS are added",
    )
    start.add_argument(
        "--require-token",
        action="store_true",
        default=None,
        help="require a viewer token for evaluation and sync too (open by default, as in flagd)",
    )
    start.add_argument("--tls-cert", default=None, metavar="PEM", help="serve gRPC over TLS")
    start.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")
    start.add_argument(
        "--tls-client-ca", default=None, metavar="PEM", help="require client certificates (mTLS)"
    )
    start.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    hash_token = commands.add_parser("hash-token", help=auth.HASH_TOKEN_HELP)
    auth.configure_hash_token_parser(hash_token)
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
        state=pick(args.state, "state", ""),
        state_dir=pick(args.state_dir, "state-dir", ".state/flagd"),
        token_file=pick(args.token_file, "token-file", None),
        require_token=bool(pick(args.require_token, "require-token", False)),
        tls_cert=pick(args.tls_cert, "server-cert-path", None),
        tls_key=pick(args.tls_key, "server-key-path", None),
        tls_client_ca=pick(args.tls_client_ca, "tls-client-ca", None),
    )


async def _serve(config: DaemonConfig) -> int:
    try:
        daemon = Daemon(config)
    except (OSError, ValueError) as exc:
        print(f"flagd: {exc}", file=sys.stderr)
        return 2
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
    if args.command == "hash-token":
        return auth.run_hash_token(args)
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
