"""Generate deploy/k8s/flagd-flags.configmap.yaml from deploy/flags/payments.flagd.json.

    .venv/bin/python -m tests.deploy.flags_configmap           # rewrite the ConfigMap
    .venv/bin/python -m tests.deploy.flags_configmap --check   # exit 1 if it is stale

The flag file in deploy/flags/ is the one source of truth; the ConfigMap carries it byte for
byte (tests/deploy/test_manifests.py fails when they differ).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
FLAG_FILE = REPO / "deploy" / "flags" / "payments.flagd.json"
CONFIGMAP = REPO / "deploy" / "k8s" / "flagd-flags.configmap.yaml"
KEY = FLAG_FILE.name

HEADER = """\
# GENERATED from deploy/flags/payments.flagd.json: do not edit by hand. After changing the flag
# file run `.venv/bin/python -m tests.deploy.flags_configmap`; tests/deploy fails while the two
# differ. Mounted by deploy/k8s/flagd.yaml at /etc/flagd/flags (as a directory, so updates
# reach the daemon, which reloads the file live; admin overrides stay in force over it).
"""


def render(content: str) -> str:
    """The ConfigMap manifest whose data[KEY] is exactly ``content``."""
    meta = (
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: flagd-flags\n"
        "  namespace: payments\n"
        "  labels:\n"
        "    app: flagd\n"
        "    app.kubernetes.io/part-of: ripcord\n"
        "data:\n"
    )
    lines = content.splitlines()
    literal_ok = (
        content.endswith("\n")
        and not content.endswith("\n\n")
        and bool(lines)
        and not lines[0].startswith((" ", "\t"))
        and "\r" not in content
        and "\t" not in content
    )
    if literal_ok:
        body = f"  {KEY}: |\n" + "".join(f"    {line}\n" if line else "\n" for line in lines)
    else:  # anything a literal block cannot carry exactly: let PyYAML quote it
        body = yaml.safe_dump({KEY: content}, width=100, allow_unicode=True)
        body = "".join(f"  {line}\n" for line in body.splitlines())
    text = HEADER + meta + body
    loaded = yaml.safe_load(text)
    if loaded["data"][KEY] != content:  # pragma: no cover - guarded by the two branches
        raise AssertionError("the generated ConfigMap does not round-trip the flag file")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Write the ConfigMap, or with --check report whether it is up to date."""
    args = list(sys.argv[1:] if argv is None else argv)
    wanted = render(FLAG_FILE.read_text(encoding="utf-8"))
    if args == ["--check"]:
        current = CONFIGMAP.read_text(encoding="utf-8") if CONFIGMAP.exists() else ""
        if current != wanted:
            print(
                f"{CONFIGMAP.relative_to(REPO)} is stale: run python -m tests.deploy.flags_configmap"
            )
            return 1
        return 0
    if args:
        print("usage: python -m tests.deploy.flags_configmap [--check]", file=sys.stderr)
        return 2
    CONFIGMAP.write_text(wanted, encoding="utf-8")
    print(f"wrote {CONFIGMAP.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
