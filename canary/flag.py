"""The release flag as the driver sees it: read and set its split through the admin API
(gRPC), with expected_version so an operator's change is never overwritten."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import grpc

__all__ = [
    "AdminFlag",
    "FlagActuator",
    "FlagConflictError",
    "FlagError",
    "FlagView",
]


class FlagError(Exception):
    """The admin API could not read or change the flag."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class FlagConflictError(FlagError):
    """expected_version did not match: someone else changed the flag (ABORTED)."""


@dataclass(frozen=True)
class FlagView:
    """The release flag as the admin API shows it."""

    on: str  # the variant serving the new path
    off: str
    weight: int | None  # on's weight in the split
    version: int  # last_change.version, the expected_version for the next change
    reason: str  # last change's reason
    actor: str


class FlagActuator(Protocol):
    """What the driver needs from the admin API (AdminFlag, or a fake in tests)."""

    def read(self) -> FlagView:
        """The flag now."""
        ...

    def set_weight(self, weight: int, reason: str, expected_version: int | None) -> int:
        """SetRollout on=weight off=100-weight; returns the new last_change version."""
        ...


class AdminFlag:
    """The release flag through ripcord.admin.v1.FlagAdmin (bearer token from RIPCORD_TOKEN)."""

    def __init__(
        self,
        server: str,
        flag: str,
        *,
        token: str = "",
        flag_set: str = "",
        timeout: float = 10.0,
        tls: bool = False,
        cacert: bytes | None = None,
    ) -> None:
        from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc

        self.server = server
        self.flag = flag
        self.flag_set = flag_set
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if tls or cacert is not None:
            credentials = grpc.ssl_channel_credentials(cacert)
            self.channel = grpc.secure_channel(server, credentials)
        else:
            self.channel = grpc.insecure_channel(server)
        self.stub = admin_pb2_grpc.FlagAdminStub(self.channel)
        self._order: list[str] | None = None
        self._on_off: tuple[str, str] | None = None

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code()
            text = f"{code.name}: {e.details()} ({self.server})"
            if code == grpc.StatusCode.ABORTED:
                raise FlagConflictError(text, code) from None
            raise FlagError(text, code) from None

    def read(self) -> FlagView:
        """GetFlag; works out which variant is `on` the way `ripcord flags rollout N` does."""
        from ripcord import flags_render
        from ripcord.flags_cli import on_off
        from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb

        got = self._call("GetFlag", pb.GetFlagRequest(key=self.flag, flag_set_id=self.flag_set))
        pair = on_off(got.flag, flags_render.struct_data(got.definition))
        if isinstance(pair, str):
            raise FlagError(f"{self.flag}: {pair}")
        on, off, _ = pair
        self._on_off = (on, off)
        self._order = [w.variant for w in got.flag.rollout]
        weights = {w.variant: int(w.weight) for w in got.flag.rollout}
        total = sum(weights.values())
        weight = round(100 * weights[on] / total) if total else None
        last = got.flag.last_change
        return FlagView(on, off, weight, int(last.version), last.reason, last.actor)

    def set_weight(self, weight: int, reason: str, expected_version: int | None) -> int:
        """SetRollout(on=weight, off=100-weight, reason, expected_version)."""
        from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb

        if self._on_off is None or self._order is None:
            self.read()
        assert self._on_off is not None and self._order is not None
        on, off = self._on_off
        order = self._order
        weights = sorted([(on, weight), (off, 100 - weight)], key=lambda w: order.index(w[0]))
        request = pb.SetRolloutRequest(
            key=self.flag,
            flag_set_id=self.flag_set,
            weights=[pb.RolloutWeight(variant=v, weight=w) for v, w in weights],
            reason=reason,
            expected_version=expected_version,
        )
        reply = self._call("SetRollout", request)
        return int(reply.change.version or reply.version)
