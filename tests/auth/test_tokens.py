"""Token sources (hashed file, RIPCORD_TOKENS), hashing, policy validation and hash-token."""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

import pytest

from flagd.auth import (
    FLAG_ADMIN_POLICY,
    Principal,
    Role,
    TokenAuthInterceptor,
    TokenStore,
    configure_hash_token_parser,
    hash_token,
    load_tokens,
    normalize_policy,
    run_hash_token,
)

SECRET = "s3cret-token-value-0123456789"
HASHED = hash_token(SECRET)


def test_hash_token_is_sha256_hex():
    expected = "sha256:" + hashlib.sha256(SECRET.encode()).hexdigest()
    assert expected == HASHED
    assert hash_token(SECRET) == HASHED


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("short-token", "at least 16"),
        ("has space 0123456789abcdef", "only letters"),
        ("comma,0123456789abcdef", "only letters"),
        ("colon:0123456789abcdef", "only letters"),
        ("", "only letters"),
    ],
)
def test_hash_token_rejects_unusable_tokens_without_quoting_them(token, problem):
    with pytest.raises(ValueError, match=problem) as info:
        hash_token(token)
    assert not token or token not in str(info.value)


def test_role_order_and_parse():
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.parse(" Operator ") is Role.OPERATOR
    assert str(Role.ADMIN) == "admin"
    with pytest.raises(ValueError, match="viewer, operator or admin"):
        Role.parse("root")


def test_file_format(tmp_path: Path):
    other = hash_token("another-token-0123456789")
    path = tmp_path / "tokens"
    path.write_text(
        f"# comment\n\n  {HASHED} alice viewer  # trailing comment\n{other}\tbob@ops\tADMIN\n"
    )
    store = TokenStore.from_file(path)
    assert len(store) == 2
    assert store.authenticate(SECRET) == Principal("alice", Role.VIEWER)
    assert store.authenticate("another-token-0123456789") == Principal("bob@ops", Role.ADMIN)
    assert store.authenticate("unknown-token-0123456789") is None
    assert store.authenticate("") is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"{HASHED} alice", "expected 3 fields"),
        (f"{HASHED} alice viewer extra", "expected 3 fields"),
        (f"{SECRET} alice viewer", "not a plain token"),
        (f"alice viewer {SECRET}", "not a plain token"),
        ("sha256:abc alice viewer", "64 lowercase hex"),
        (f"{HASHED.upper().replace('SHA256', 'sha256')} alice viewer", "64 lowercase hex"),
        (f"{HASHED} alice {SECRET}", "role must be viewer, operator or admin"),
        (f"{HASHED} {SECRET}! viewer", "principal must be"),
        (f"{HASHED} alice superuser", "role must be"),
    ],
)
def test_file_errors_name_the_line_and_never_echo_it(line, problem):
    with pytest.raises(ValueError, match=problem) as info:
        TokenStore.from_lines(["# header", "", line], "tokens.txt")
    message = str(info.value)
    assert message.startswith("tokens.txt:3: ")
    assert SECRET not in message and "superuser" not in message


def test_same_token_for_two_principals_is_rejected():
    lines = [f"{HASHED} alice viewer", f"{HASHED} bob viewer"]
    with pytest.raises(ValueError, match=r"t:2: the same token is already given at t:1"):
        TokenStore.from_lines(lines, "t")
    # The same grant twice is harmless.
    assert len(TokenStore.from_lines([lines[0], lines[0]], "t")) == 1


def test_unreadable_file(tmp_path: Path):
    with pytest.raises(OSError, match=r"token file .*missing: cannot read"):
        TokenStore.from_file(tmp_path / "missing")


def test_env_entries():
    value = f" alice:viewer:{SECRET} , canary-runner:operator:tok/with+b64chars0123==,"
    store = TokenStore.from_env_value(value)
    assert store.authenticate(SECRET) == Principal("alice", Role.VIEWER)
    assert store.authenticate("tok/with+b64chars0123==") == Principal(
        "canary-runner", Role.OPERATOR
    )


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (SECRET, "expected principal:role:token"),
        (f"alice:{SECRET}", "expected principal:role:token"),
        (f"alice::{SECRET}", "expected principal:role:token"),
        (f"alice:root:{SECRET}", "role must be"),
        (f"{SECRET}:alice:viewer", "role must be"),
        (f"viewer:alice:{SECRET}", "role must be"),
        ("alice:viewer:short", "at least 16"),
        (f"alice:viewer:{SECRET}:x", "only letters"),
        (f"al ice:viewer:{SECRET}", "principal must be"),
    ],
)
def test_env_errors_name_the_entry_and_never_echo_it(entry, problem):
    with pytest.raises(ValueError, match=problem) as info:
        TokenStore.from_env_value(f"bob:viewer:{'b' * 20},{entry}")
    message = str(info.value)
    assert message.startswith("RIPCORD_TOKENS entry 2: ")
    assert SECRET not in message and "short" not in message


def test_load_tokens_combines_file_and_env(tmp_path: Path):
    path = tmp_path / "tokens"
    path.write_text(f"{HASHED} alice viewer\n")
    store = load_tokens(path, environ={"RIPCORD_TOKENS": f"bob:admin:{'b' * 20}"})
    assert {p.name for p in store.principals()} == {"alice", "bob"}
    assert len(load_tokens(None, environ={})) == 0
    with pytest.raises(ValueError, match="RIPCORD_TOKENS entry 1: the same token"):
        load_tokens(path, environ={"RIPCORD_TOKENS": f"mallory:admin:{SECRET}"})


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        ({"SetRollout": "operator"}, "not /pkg.Service/Method"),
        ({"/a.B/C/D": "operator"}, "not /pkg.Service/Method"),
        ({"/a.B/C*": "operator"}, "not /pkg.Service/Method"),
        ({"/grpc.health.v1.Health/Check": "viewer"}, "must stay open"),
        ({"/grpc.reflection.v1alpha.ServerReflection/*": "viewer"}, "must stay open"),
        ({"/a.B/C": "root"}, "unknown role"),
    ],
)
def test_policy_errors(policy, problem):
    with pytest.raises(ValueError, match=problem):
        normalize_policy(policy)


def test_required_roles():
    interceptor = TokenAuthInterceptor(TokenStore(), FLAG_ADMIN_POLICY)
    admin = "/ripcord.admin.v1.FlagAdmin/"
    assert interceptor.required_role(admin + "GetFlag") is Role.VIEWER
    assert interceptor.required_role(admin + "SetRollout") is Role.OPERATOR
    assert interceptor.required_role(admin + "Unheard") is Role.ADMIN
    assert interceptor.required_role("/flagd.evaluation.v1.Service/ResolveBoolean") is None
    strict = TokenAuthInterceptor(TokenStore(), FLAG_ADMIN_POLICY, require_token_for_all=True)
    assert strict.required_role("/flagd.sync.v1.FlagSyncService/SyncFlags") is Role.VIEWER
    assert strict.required_role(admin + "PutFlag") is Role.ADMIN
    assert strict.required_role("/grpc.health.v1.Health/Watch") is None
    assert strict.required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") is None


def hash_cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    configure_hash_token_parser(parser)
    out, err = io.StringIO(), io.StringIO()
    code = run_hash_token(parser.parse_args(argv), io.StringIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


def test_hash_token_cli_reads_stdin():
    assert hash_cli(stdin=SECRET + "\n") == (0, HASHED + "\n", "")
    code, out, _ = hash_cli("canary-runner", "Operator", stdin=SECRET)
    assert code == 0
    assert out == f"{HASHED} canary-runner operator\n"
    store = TokenStore.from_lines(out.splitlines(), "cli")
    assert store.authenticate(SECRET) == Principal("canary-runner", Role.OPERATOR)


def test_hash_token_cli_generate():
    code, out, err = hash_cli("--generate", "alice", "admin")
    assert code == 0
    token = err.rsplit(": ", 1)[1].strip()
    assert out == f"{hash_token(token)} alice admin\n"


@pytest.mark.parametrize(
    ("argv", "stdin", "problem"),
    [
        (("alice",), SECRET, "give both PRINCIPAL and ROLE"),
        (("alice", "root"), SECRET, "unknown role"),
        ((), "tiny", "at least 16"),
        ((), "", "only letters"),
    ],
)
def test_hash_token_cli_errors(argv, stdin, problem):
    code, out, err = hash_cli(*argv, stdin=stdin)
    assert code == 2 and out == ""
    assert problem in err and (not stdin or stdin not in err)
