"""The payment client's retry rule: an unknown outcome is retried with the same key and shows
in its own stats row; the payment fails only when its last attempt does."""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest

from loadtest.book import PaymentBook
from loadtest.drill import Recorder
from loadtest.mix import PaymentSpec
from loadtest.payer import AUTHORIZE, RETRY, Payer
from ripcord_pb.ripcord.payments.v1 import payments_pb2 as pb

SPEC = PaymentSpec("m-1", "c-1", 1000, "EUR", "tok", "424242", "4242", "EUR", False, "approve")


class Failure(grpc.RpcError):  # type: ignore[misc]  # grpc is untyped here
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return str(self._code.name)


class Stub:
    """Answers Authorize from a script: an exception to raise or a response to return."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.keys: list[str] = []

    def Authorize(self, request: Any, timeout: float) -> Any:
        self.keys.append(request.idempotency_key)
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def payer(script: list[Any], reports: list[dict[str, Any]]) -> tuple[Payer, Stub]:
    p = Payer(
        "127.0.0.1:1", report=lambda **kw: reports.append(kw), book=PaymentBook(),
        recorder=Recorder(), source="t", key_prefix="k", rng=random.Random(0),
        sleep=lambda s: None, max_retries=2,
    )  # fmt: skip
    stub = Stub(script)
    p.stub = stub
    return p, stub


APPROVED = pb.AuthorizeResponse(payment_id="p-1", status="APPROVED", engine="new", flag_version=3)


@pytest.mark.parametrize("code", ["CANCELLED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"])
def test_an_unknown_outcome_is_retried_with_the_same_key(code: str) -> None:
    reports: list[dict[str, Any]] = []
    p, stub = payer([Failure(getattr(grpc.StatusCode, code)), APPROVED], reports)
    sent = p.pay(SPEC)
    assert sent is not None and sent.payment_id == "p-1"
    assert len(set(stub.keys)) == 1 and len(stub.keys) == 2
    assert [(r["name"], r["exception"]) for r in reports] == [
        (f"{AUTHORIZE} [retried after {code}]", None),
        (RETRY, None),
    ]
    assert p.book.acknowledged == {("m-1", stub.keys[0]): "p-1"}


def test_the_payment_fails_when_its_last_attempt_does() -> None:
    reports: list[dict[str, Any]] = []
    cancelled = grpc.StatusCode.CANCELLED
    p, stub = payer([Failure(cancelled), Failure(cancelled), Failure(cancelled)], reports)
    assert p.pay(SPEC) is None
    assert [r["exception"] is None for r in reports] == [True, True, False]
    assert reports[-1]["name"] == RETRY and p.book.unknown == {("m-1", stub.keys[0])}


def test_a_refusal_that_is_not_an_unknown_outcome_is_not_retried() -> None:
    reports: list[dict[str, Any]] = []
    p, stub = payer([Failure(grpc.StatusCode.INVALID_ARGUMENT)], reports)
    assert p.pay(SPEC) is None
    assert len(stub.keys) == 1 and reports[0]["exception"] is not None
