"""Three daemon replicas on one PostgreSQL database: a change made through any of them reaches
the streams of all of them (LISTEN/NOTIFY), and they serve the same flags."""

from __future__ import annotations

import queue
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from ripcord_pb.flagd.sync.v1 import sync_pb2
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb
from tests.conftest import PG_URL
from tests.daemon.conftest import REPO
from tests.daemon.test_streams_and_sources import pump

FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"
CIRCUIT = "payments.new-router.circuit-open"


@pytest.fixture
def pg_state() -> Iterator[str]:
    """A fresh schema on the test database, dropped afterwards."""
    schema = f"rcreplica_{secrets.token_hex(4)}"
    try:
        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required ({PG_URL}): {exc}")
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield f"{PG_URL}?schema={schema}"
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    conn.close()


def test_three_replicas_converge(daemon_factory, pg_state):
    replicas = [daemon_factory("--uri", f"file:{FLAGS}", "--state", pg_state) for _ in range(3)]
    events: list[queue.Queue[tuple[float, Any]]] = []
    syncs: list[queue.Queue[tuple[float, Any]]] = []
    for d in replicas:
        events.append(pump(d.v2().EventStream(v2.EventStreamRequest())))
        syncs.append(pump(d.sync().SyncFlags(sync_pb2.SyncFlagsRequest())))
    for q in events + syncs:
        q.get(timeout=5)  # provider_ready / first snapshot

    for i, writer in enumerate(replicas):  # every replica takes a turn as the writer
        variant = "on" if i % 2 == 0 else "off"
        t0 = time.monotonic()
        reply = writer.admin("operator").SetDefaultVariant(
            pb.SetDefaultVariantRequest(key=CIRCUIT, variant=variant, reason=f"turn {i}")
        )
        for q in events:
            arrived, message = q.get(timeout=5)
            assert message.type == "configuration_change"
            assert CIRCUIT in message.data["flags"]
        for q in syncs:
            arrived, message = q.get(timeout=5)
            assert f'"defaultVariant":"{variant}"' in message.flag_configuration
        print(f"change via replica {i}: all 6 streams within {1000 * (arrived - t0):.1f} ms")
        for d in replicas:
            r = d.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key=CIRCUIT))
            assert r.value is (variant == "on")
            assert d.readyz()["configuration_version"] == reply.version

    audits = [
        [
            c.version
            for c in d.admin("viewer").ListChanges(pb.ListChangesRequest(limit=1000)).changes
        ]
        for d in replicas
    ]
    assert audits[0] == audits[1] == audits[2]
    assert audits[0] == list(range(1, len(audits[0]) + 1))  # one record per version
