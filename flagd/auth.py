"""Bearer-token auth for the daemon's gRPC ports: tokens, roles and a grpc.aio server interceptor.

Tokens
    Clients send ``authorization: Bearer <token>`` metadata. The daemon knows tokens only by
    their SHA-256 (``sha256:<hex>``), from a token file (one ``sha256:<hex> PRINCIPAL ROLE``
    per line; ``#`` comments and blank lines allowed) and/or from ``RIPCORD_TOKENS``
    (comma-separated ``principal:role:token``; hashed on load, the plain text is dropped).
    Tokens follow RFC 6750's ``b64token`` alphabet and are at least 16 characters long.
    ``ripcord flagd hash-token`` turns a token into a file line; no token text is ever logged.

Roles
    ``viewer`` < ``operator`` < ``admin``; a method's required role is met by any role at or
    above it. The policy maps full method names (``/pkg.Service/Method``) to roles, and
    ``/pkg.Service/*`` covers that service's methods not listed by name. Other methods are open
    unless ``require_token_for_all`` (then they need ``viewer``). Health and reflection always
    stay open: probes and grpcurl discovery carry no token.

Outcomes
    No or malformed metadata, or an unknown token: ``UNAUTHENTICATED``; a known token whose
    role is too weak: ``PERMISSION_DENIED``. Each is counted in ``flagd_auth_failures_total``
    {reason, method} and logged at WARNING with the caller's peer address.

How handlers learn the caller
    On success the interceptor sets a ``contextvars.ContextVar`` and returns the method's
    handler unchanged. grpc.aio runs every RPC's interceptors and its handler in one fresh
    ``contextvars.Context`` (documented on ``grpc.aio.ServerInterceptor.intercept_service``), so
    ``current_principal()`` inside the handler returns the caller, for unary and streaming
    handlers alike, async generators or ``context.write`` style, servicer or generic handlers
    with raw-bytes requests. Returning the original handler, rather than a wrapper, avoids the
    wrapping pitfalls of streaming handlers. Rejections return a handler of the same
    cardinality that aborts. Limitation: a plain ``def`` (non-async) handler runs in grpc's
    thread pool outside that context and sees ``None``; the daemon's handlers are all async.
"""

from __future__ import annotations

import argparse
import contextvars
import enum
import getpass
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import grpc
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger("flagd.auth")

TOKENS_ENV = "RIPCORD_TOKENS"
HASH_PREFIX = "sha256:"
MIN_TOKEN_LENGTH = 16

# RFC 6750 b64token: safe in gRPC metadata, and free of the ',' ':' and spaces the sources split on.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_HASH_RE = re.compile(r"sha256:([0-9a-f]{64})")
_METHOD_RE = re.compile(r"/[^/\s*]+/(?:[^/\s*]+|\*)")

# Always open: Kubernetes probes and grpcurl's service discovery cannot send a token.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

# Roles of ripcord.admin.v1.FlagAdmin, as its proto comments group them (ReleaseOverride sits
# in the "Definitions: role admin" group).
FLAG_ADMIN_POLICY: Mapping[str, str] = {
    "/ripcord.admin.v1.FlagAdmin/ListFlags": "viewer",
    "/ripcord.admin.v1.FlagAdmin/GetFlag": "viewer",
    "/ripcord.admin.v1.FlagAdmin/ListChanges": "viewer",
    "/ripcord.admin.v1.FlagAdmin/WatchChanges": "viewer",
    "/ripcord.admin.v1.FlagAdmin/SetFlagState": "operator",
    "/ripcord.admin.v1.FlagAdmin/SetDefaultVariant": "operator",
    "/ripcord.admin.v1.FlagAdmin/SetRollout": "operator",
    "/ripcord.admin.v1.FlagAdmin/PutFlag": "admin",
    "/ripcord.admin.v1.FlagAdmin/DeleteFlag": "admin",
    "/ripcord.admin.v1.FlagAdmin/ReleaseOverride": "admin",
    # Fail closed: a method added to the service later needs admin until it is listed.
    "/ripcord.admin.v1.FlagAdmin/*": "admin",
}


class Role(enum.IntEnum):
    """What a token may do; a higher role includes every lower one."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        """The role named `text` (case-insensitive); ValueError otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: expected viewer, operator or admin") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a name for audit records and its role."""

    name: str
    role: Role


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "flagd_auth_principal", default=None
)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled, or None on a method that needs no token."""
    return _current.get()


def require_principal() -> Principal:
    """The caller of the RPC being handled; RuntimeError if the policy does not protect it."""
    principal = _current.get()
    if principal is None:
        raise RuntimeError(
            "no authenticated principal: the method is missing from the auth policy, the "
            "interceptor is not installed, or the handler is not async"
        )
    return principal


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying `token` (works on insecure channels, unlike call credentials)."""
    return (("authorization", f"Bearer {token}"),)


# -- tokens ------------------------------------------------------------------------------------


def check_token(token: str) -> None:
    """ValueError (never quoting the token) unless `token` is usable as a bearer token."""
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError(
            "token must use only letters, digits and - . _ ~ + / (optionally ending in =)"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"token is {len(token)} characters; use at least {MIN_TOKEN_LENGTH}")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of a token, the form the token file stores; validates the token."""
    check_token(token)
    return HASH_PREFIX + _digest(token).hex()


def generate_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def _check_principal(name: str) -> None:
    if not _PRINCIPAL_RE.fullmatch(name):
        raise ValueError(
            "principal must be 1-128 letters, digits or . _ @ - (starting with a letter or digit)"
        )


class _Entry(NamedTuple):
    principal: Principal
    where: str  # origin (file:line or env entry), for conflict errors
    digest: bytes


class TokenStore:
    """Known tokens by SHA-256 digest; look-ups cost one hash and one dict access."""

    def __init__(self) -> None:
        self._by_digest: dict[bytes, _Entry] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def principals(self) -> list[Principal]:
        """Every configured principal (a token each), for startup logging."""
        return [entry.principal for entry in self._by_digest.values()]

    def add_hash(self, hashed: str, principal: Principal, where: str) -> None:
        """Add a ``sha256:<hex>`` token hash; `where` names its origin in errors."""
        match = _HASH_RE.fullmatch(hashed)
        if match is None:
            raise ValueError(f"{where}: expected sha256:<64 lowercase hex digits>")
        self._add(bytes.fromhex(match.group(1)), principal, where)

    def add_token(self, token: str, principal: Principal, where: str) -> None:
        """Add a plain token (only its digest is kept)."""
        try:
            check_token(token)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        self._add(_digest(token), principal, where)

    def _add(self, digest: bytes, principal: Principal, where: str) -> None:
        previous = self._by_digest.get(digest)
        if previous is not None and previous.principal != principal:
            # One token, two identities: the audit trail could not say who acted.
            raise ValueError(f"{where}: the same token is already given at {previous.where}")
        if previous is None:
            self._by_digest[digest] = _Entry(principal, where, digest)

    def update(self, other: TokenStore) -> None:
        """Add every token of `other` (same conflict rules as adding one by one)."""
        for entry in other._by_digest.values():
            self._add(entry.digest, entry.principal, entry.where)

    def authenticate(self, token: str) -> Principal | None:
        """The principal a presented token belongs to, or None."""
        digest = _digest(token)
        entry = self._by_digest.get(digest)
        if entry is None:
            return None
        # The dict lookup is keyed by a digest, so its timing says nothing usable about the
        # token; the constant-time comparison states the match explicitly.
        return entry.principal if hmac.compare_digest(entry.digest, digest) else None

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str) -> TokenStore:
        """Parse token-file lines ``sha256:<hex> PRINCIPAL ROLE``; errors name `source`:line."""
        store = cls()
        for number, raw in enumerate(lines, start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}:{number}"
            fields = line.split()
            # Never quote the line: a plain token pasted by mistake must not reach a log.
            if len(fields) != 3:
                raise ValueError(
                    f"{where}: expected 3 fields 'sha256:<hex> PRINCIPAL ROLE', got {len(fields)}"
                )
            hashed, name, role_text = fields
            if not hashed.startswith(HASH_PREFIX):
                raise ValueError(
                    f"{where}: field 1 must be a hashed token (sha256:<hex>), not a plain token; "
                    "make one with `ripcord flagd hash-token`"
                )
            try:
                _check_principal(name)
                role = _parse_role_quietly(role_text)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            store.add_hash(hashed, Principal(name, role), where)
        return store

    @classmethod
    def from_file(cls, path: str | Path) -> TokenStore:
        """Load a token file; OSError/ValueError name the path (and line)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise OSError(f"token file {path}: cannot read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError:
            raise ValueError(f"token file {path}: not UTF-8 text") from None
        return cls.from_lines(text.splitlines(), str(path))

    @classmethod
    def from_env_value(cls, value: str, name: str = TOKENS_ENV) -> TokenStore:
        """Parse ``principal:role:token,...``; errors name the entry number, never its text."""
        store = cls()
        for number, raw in enumerate(value.split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            where = f"{name} entry {number}"
            parts = entry.split(":", 2)
            if len(parts) != 3 or not all(parts):
                raise ValueError(f"{where}: expected principal:role:token")
            principal, role_text, token = parts
            try:
                _check_principal(principal)
                role = _parse_role_quietly(role_text)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            store.add_token(token, Principal(principal, role), where)
        return store


def _parse_role_quietly(text: str) -> Role:
    # Role.parse quotes its input; a misordered entry could put a token there.
    try:
        return Role.parse(text)
    except ValueError:
        raise ValueError("role must be viewer, operator or admin") from None


def load_tokens(
    file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> TokenStore:
    """Tokens from the hashed token file (if given) plus ``RIPCORD_TOKENS`` (if set)."""
    env = os.environ if environ is None else environ
    store = TokenStore.from_file(file) if file is not None else TokenStore()
    value = env.get(TOKENS_ENV, "")
    if value.strip():
        store.update(TokenStore.from_env_value(value))
    return store


# -- interceptor -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Denial:
    code: grpc.StatusCode
    reason: str  # metrics label
    message: str  # sent to the client
    detail: str  # logged


_MISSING = _Denial(
    grpc.StatusCode.UNAUTHENTICATED,
    "missing_token",
    "missing credentials: send metadata 'authorization: Bearer <token>'",
    "no authorization metadata",
)
_BAD_SCHEME = _Denial(
    grpc.StatusCode.UNAUTHENTICATED,
    "bad_scheme",
    "malformed credentials: the authorization metadata must be 'Bearer <token>'",
    "authorization metadata is not 'Bearer <token>'",
)
_UNKNOWN = _Denial(
    grpc.StatusCode.UNAUTHENTICATED,
    "unknown_token",
    "unknown bearer token: send 'authorization: Bearer <token>' with a token this daemon "
    f"knows (its token file or {TOKENS_ENV})",
    "unknown bearer token",
)


def normalize_policy(policy: Mapping[str, Role | str]) -> dict[str, Role]:
    """Validate a ``{"/pkg.Service/Method" or "/pkg.Service/*": role}`` policy."""
    result: dict[str, Role] = {}
    for method, role in policy.items():
        if not _METHOD_RE.fullmatch(method):
            raise ValueError(
                f"auth policy: {method!r} is not /pkg.Service/Method or /pkg.Service/*"
            )
        if method.startswith(OPEN_SERVICES):
            raise ValueError(f"auth policy: {method} must stay open (probes and grpcurl use it)")
        result[method] = role if isinstance(role, Role) else Role.parse(role)
    return result


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks bearer tokens against a per-method role policy; see the module docstring."""

    def __init__(
        self,
        tokens: TokenStore,
        policy: Mapping[str, Role | str],
        *,
        require_token_for_all: bool = False,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.tokens = tokens
        self.policy = normalize_policy(policy)
        self.require_token_for_all = require_token_for_all
        self.failures = Counter(
            "flagd_auth_failures",
            "RPCs rejected by token auth, by reason (missing_token, bad_scheme, unknown_token, "
            "insufficient_role) and full method name.",
            ["reason", "method"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        # Only methods that resolved to a handler get here, so this stays small.
        self._required: dict[str, Role | None] = {}

    def required_role(self, method: str) -> Role | None:
        """The role `method` needs, or None when it is open."""
        try:
            return self._required[method]
        except KeyError:
            pass
        role = self.policy.get(method)
        if role is None:
            role = self.policy.get(method[: method.rfind("/") + 1] + "*")
        if role is None and self.require_token_for_all and not method.startswith(OPEN_SERVICES):
            role = Role.VIEWER
        self._required[method] = role
        return role

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """Let the call through with the principal set, or swap in a handler that aborts."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: UNIMPLEMENTED as usual (keeps metric labels bounded)
        method: str = handler_call_details.method
        required = self.required_role(method)
        if required is None:
            return handler
        outcome = self._check(handler_call_details.invocation_metadata, method, required)
        if isinstance(outcome, Principal):
            _current.set(outcome)  # same Context as the handler: see module docstring
            return handler
        return self._rejecting(handler, method, outcome)

    def _check(
        self, metadata: Sequence[tuple[str, Any]] | None, method: str, required: Role
    ) -> Principal | _Denial:
        value: Any = None
        for key, item in metadata or ():
            if key == "authorization":
                value = item
                break
        if value is None:
            return _MISSING
        scheme, _, token = str(value).strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _BAD_SCHEME
        principal = self.tokens.authenticate(token)
        if principal is None:
            return _UNKNOWN
        if principal.role < required:
            return _Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                "insufficient_role",
                f"principal {principal.name!r} has role {principal.role}; "
                f"{method} requires role {required}",
                f"principal {principal.name!r} has role {principal.role}, needs {required}",
            )
        return principal

    def _rejecting(self, handler: Any, method: str, denial: _Denial) -> Any:
        # The replacement must have the original's cardinality: grpc.aio dispatches on the
        # returned handler's streaming flags, and a unary one on a client-streaming call would
        # wait for a request message before rejecting. No deserializer: requests are not read.
        async def reject(context: Any) -> None:
            self.failures.labels(denial.reason, method).inc()
            log.warning(
                "auth: %s %s from %s: %s",
                denial.code.name,
                method,
                context.peer(),
                denial.detail,
            )
            await context.abort(denial.code, denial.message)

        async def behavior(_request: Any, context: Any) -> None:
            await reject(context)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(behavior)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(behavior)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(behavior)
        return grpc.unary_unary_rpc_method_handler(behavior)


# -- `ripcord flagd hash-token` ------------------------------------------------------------------

HASH_TOKEN_HELP = "print the sha256 line for a token file (reads the token from stdin)"
HASH_TOKEN_DESCRIPTION = """\
Hash a bearer token for the daemon's token file. The token is read from stdin (a prompt
without echo on a terminal) so it never appears in shell history or `ps`; --generate makes a
new random token instead and shows it once on stderr.

examples:
  ripcord flagd hash-token alice operator < token.txt >> tokens.txt
  ripcord flagd hash-token --generate canary-runner operator >> tokens.txt
"""


def configure_hash_token_parser(parser: argparse.ArgumentParser) -> None:
    """Add hash-token's arguments to `parser` (a subparser of the daemon's CLI)."""
    parser.description = HASH_TOKEN_DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "principal", nargs="?", help="principal name; with ROLE, print a whole token-file line"
    )
    parser.add_argument("role", nargs="?", help="viewer, operator or admin")
    parser.add_argument(
        "--generate", action="store_true", help="make a new random token (shown on stderr)"
    )


def run_hash_token(
    args: argparse.Namespace,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run hash-token with parsed `args`; returns the exit code."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    suffix = ""
    try:
        if args.principal is not None:
            if args.role is None:
                raise ValueError("give both PRINCIPAL and ROLE, or neither")
            _check_principal(args.principal)
            suffix = f" {args.principal} {Role.parse(args.role)}"
        if args.generate:
            token = generate_token()
        elif stdin.isatty():
            token = getpass.getpass("token (not echoed): ")
        else:
            token = stdin.readline().rstrip("\r\n")
        line = hash_token(token) + suffix
    except ValueError as exc:
        print(f"hash-token: {exc}", file=stderr)
        return 2
    if args.generate:
        print(f"new token (give it to the client; it is not stored anywhere): {token}", file=stderr)
    print(line, file=stdout)
    return 0


def hash_token_main(argv: Sequence[str] | None = None, prog: str = "flagd hash-token") -> int:
    """Standalone entry point: parse `argv` and run hash-token."""
    parser = argparse.ArgumentParser(prog=prog)
    configure_hash_token_parser(parser)
    return run_hash_token(parser.parse_args(argv))
