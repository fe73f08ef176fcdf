"""Step definitions for the flagd-testbed provider suites.

Adapted from the upstream Python step definitions in open-feature/python-sdk-contrib,
``providers/openfeature-provider-flagd/tests/e2e/step/`` (``provider_steps.py``,
``config_steps.py``, ``context_steps.py``, ``flag_step.py``, ``event_steps.py``, ``_utils.py``):
same step texts, same type casts, same provider options, same launchpad operations.

Deliberate differences (each makes a step stricter or the run faster, never looser):

* events are kept in one ordered log with a cursor: "a X event was fired" / "the X event
  handler should have been executed" wait for an X event *after* the last one consumed, so
  "error, then ready" really means a ready that came after the error (upstream removes
  consumed events from a list with a remove-while-iterating loop);
* "the resolved details value should be" also checks the Python type (a Boolean flag must
  resolve to a bool, not to 1);
* reconnect timings: see ``_base_options``;
* READY is polled every 20 ms instead of every 2 s;
* the "unavailable" provider points at a port nothing listens on (upstream uses defaults,
  i.e. localhost:8013/8015, which may be taken on a developer machine), in file mode at a
  file that does not exist;
* FLAGD_* variables of the surrounding environment are removed for the duration of a
  scenario, so config defaults are really the defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import CacheType, Config, ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.flag_evaluation import FlagEvaluationDetails
from openfeature.provider import ProviderStatus
from openfeature.provider.no_op_provider import NoOpProvider

from .launchpad import Launchpad, Profile, free_port
from .suite import FILE, IN_PROCESS, RPC, Scenario, Step

READY_WAIT_S = 10.0  # upstream wait_for(... READY, timeout_sec=10)
EVENT_WAIT_S = 30.0  # upstream assert_handlers(..., 30)

# --------------------------------------------------------------------------- type casts


def str2bool(value: str) -> bool:
    return value.lower() in ("yes", "true", "t", "1")


def convert_resolver_type(value: str | ResolverType) -> ResolverType:
    return ResolverType(value.lower() if isinstance(value, str) else value)


def string_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()] if value.strip() else []


# flag values, context values, metadata values (upstream step/_utils.py)
VALUE_CASTS: dict[str, Callable[[str], Any]] = {
    "Integer": int,
    "Float": float,
    "String": str,
    "Boolean": str2bool,
    "Object": json.loads,
}

# provider options (upstream step/config_steps.py)
OPTION_CASTS: dict[str, Callable[[str], Any]] = {
    "Integer": int,
    "Long": int,
    "String": str,
    "Boolean": str2bool,
    "ResolverType": convert_resolver_type,
    "CacheType": CacheType,
    "StringList": string_list,
}

EXPECTED_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "Boolean": (bool,),
    "String": (str,),
    "Integer": (int,),
    "Float": (float, int),
    "Object": (dict, list),
}

EVENTS: dict[str, ProviderEvent] = {
    "ready": ProviderEvent.PROVIDER_READY,
    "error": ProviderEvent.PROVIDER_ERROR,
    "stale": ProviderEvent.PROVIDER_STALE,
    "change": ProviderEvent.PROVIDER_CONFIGURATION_CHANGED,
}

# "a <name> flagd provider" -> launchpad config (upstream provider_steps.py)
PROVIDER_LAUNCHPAD_CONFIG: dict[str, str] = {
    "stable": "default",
    "metadata": "metadata",
    "syncpayload": "sync-payload",
}


def camel_to_snake(name: str) -> str:
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", name).lower()


# --------------------------------------------------------------------------- world


@dataclass
class RecordedEvent:
    kind: str
    details: EventDetails
    at: float


class EventLog:
    def __init__(self) -> None:
        self._events: list[RecordedEvent] = []
        self._cond = threading.Condition()
        self.cursor = 0

    def record(self, kind: str, details: EventDetails) -> None:
        with self._cond:
            self._events.append(RecordedEvent(kind, details, time.monotonic()))
            self._cond.notify_all()

    def consume(self, kind: str, timeout: float) -> RecordedEvent | None:
        """First ``kind`` event at or after the cursor (waiting up to ``timeout``); moves the
        cursor past it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index in range(self.cursor, len(self._events)):
                    if self._events[index].kind == kind:
                        self.cursor = index + 1
                        return self._events[index]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def describe(self) -> str:
        with self._cond:
            start = self._events[0].at if self._events else 0.0
            items = [
                f"{'>' if i == self.cursor else ' '}{e.kind}@{e.at - start:.2f}s"
                for i, e in enumerate(self._events)
            ]
            if self.cursor == len(self._events):
                items.append(">")
        return "[" + ", ".join(items) + "]"


@dataclass
class World:
    mode: str
    launchpad: Launchpad | None
    scenario: Scenario
    option_values: dict[str, Any] = field(default_factory=dict)
    env_overrides: dict[str, str] = field(default_factory=dict)
    domain: str = ""
    provider: FlagdProvider | None = None
    client: OpenFeatureClient | None = None
    flag: tuple[str, str, str] | None = None  # key, default (raw text), type
    targeting_key: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    details: FlagEvaluationDetails[Any] | None = None
    config_or_error: tuple[Config | None, bool] | None = None
    events: EventLog = field(default_factory=EventLog)
    last_event: EventDetails | None = None
    handlers: list[tuple[ProviderEvent, Callable[[EventDetails], None]]] = field(
        default_factory=list
    )

    @property
    def resolver(self) -> ResolverType:
        return {RPC: ResolverType.RPC, IN_PROCESS: ResolverType.IN_PROCESS}.get(
            self.mode, ResolverType.FILE
        )

    def need_launchpad(self) -> Launchpad:
        if self.launchpad is None:
            raise AssertionError("this step needs the daemon launchpad")
        return self.launchpad

    def need_client(self) -> OpenFeatureClient:
        if self.client is None:
            raise AssertionError("no provider was set up before this step")
        return self.client

    def need_details(self) -> FlagEvaluationDetails[Any]:
        if self.details is None:
            raise AssertionError("the flag was not evaluated before this step")
        return self.details

    def need_flag(self) -> tuple[str, str, str]:
        if self.flag is None:
            raise AssertionError("no flag was given before this step")
        return self.flag

    def daemon_profile(self, provider_type: str) -> Profile:
        extra: tuple[str, ...] = ()
        # Fractional hash version: the daemon defaults to v3 (what the 0.6.1 provider evaluates
        # in-process). @fractional-v2 examples run in RPC mode against `--fractional v2`.
        if self.mode == RPC and "fractional-v2" in self.scenario.tags:
            extra = ("--fractional", "v2")
        return Profile(PROVIDER_LAUNCHPAD_CONFIG[provider_type], extra)

    def close(self) -> None:
        """Detach this scenario's handlers and retire its provider.

        Replacing the domain's provider makes the SDK shut the old one down on a background
        thread (a synchronous ``api.clear_providers()`` costs ~0.2 s per scenario, mostly
        gRPC channel close); every scenario uses its own domain, and its handlers are gone
        first, so nothing of it reaches later scenarios. The session fixture finally calls
        ``api.clear_providers()``."""
        if self.client is not None:
            for event, handler in self.handlers:
                self.client.remove_handler(event, handler)
        self.handlers.clear()
        if self.provider is not None:
            api.set_provider(NoOpProvider(), self.domain)
            self.provider = None


# --------------------------------------------------------------------------- registry


StepFunc = Callable[..., None]


@dataclass(frozen=True)
class StepDef:
    pattern: re.Pattern[str]
    func: StepFunc
    wants_table: bool

    def match(self, text: str) -> re.Match[str] | None:
        return self.pattern.fullmatch(text)


STEP_DEFS: list[StepDef] = []


def step(pattern: str, table: bool = False) -> Callable[[StepFunc], StepFunc]:
    def register(func: StepFunc) -> StepFunc:
        STEP_DEFS.append(StepDef(re.compile(pattern), func, table))
        return func

    return register


def find_step(text: str) -> list[StepDef]:
    return [definition for definition in STEP_DEFS if definition.match(text)]


def run_step(world: World, s: Step) -> None:
    matches = find_step(s.text)
    if len(matches) != 1:
        raise AssertionError(
            f"step {s.text!r} matches {len(matches)} step definitions (expected exactly 1)"
        )
    definition = matches[0]
    match = definition.match(s.text)
    assert match is not None
    kwargs: dict[str, Any] = dict(match.groupdict())
    if definition.wants_table:
        if s.table is None:
            raise AssertionError(f"step {s.text!r} needs a data table")
        kwargs["table"] = s.table
    definition.func(world, **kwargs)


# --------------------------------------------------------------------------- config steps


@step(r'an option "(?P<option>[^"]+)" of type "(?P<type_info>[^"]+)" with value "(?P<value>[^"]*)"')
def option_with_value(world: World, option: str, type_info: str, value: str) -> None:
    world.option_values[camel_to_snake(option)] = OPTION_CASTS[type_info](value)


@step(r'an environment variable "(?P<env>[^"]+)" with value "(?P<value>[^"]*)"')
def env_with_value(world: World, env: str, value: str) -> None:
    world.env_overrides[env] = value
    os.environ[env] = value


@step(r"a config was initialized")
def initialize_config(world: World) -> None:
    try:
        world.config_or_error = (Config(**world.option_values), False)
    except AttributeError:
        world.config_or_error = (None, True)


@step(
    r'the option "(?P<option>[^"]+)" of type "(?P<type_info>[^"]+)" '
    r'should have the value "(?P<value>[^"]*)"'
)
def check_option_value(world: World, option: str, type_info: str, value: str) -> None:
    expected = OPTION_CASTS[type_info](value)
    expected = None if expected == "null" else expected
    assert world.config_or_error is not None, "no config was initialized"
    config, error = world.config_or_error
    assert not error and config is not None, "config initialization raised"
    attribute = camel_to_snake(option)
    assert hasattr(config, attribute), f"provider Config has no option {attribute!r}"
    actual = getattr(config, attribute)
    assert actual == expected, f"option {option}: expected {expected!r}, got {actual!r}"


@step(r"we should have an error")
def check_option_error(world: World) -> None:
    assert world.config_or_error is not None, "no config was initialized"
    assert world.config_or_error[1], "expected the config initialization to fail"


# --------------------------------------------------------------------------- provider steps


def _base_options(world: World, port: int) -> dict[str, Any]:
    """upstream get_default_options_for_provider, with two reconnect timings changed.

    The 0.6.1 provider only notices an outage when it re-opens its stream, a flat
    ``retry_backoff_max_ms`` (default 5000) after the stream broke; only then does the channel
    report TRANSIENT_FAILURE (-> STALE), and ERROR follows ``retry_grace_period`` s later unless
    the channel is READY again. With upstream's values (grace 3 s, default max backoff) a 5 s
    outage against our daemon gives STALE at 6.0 s and READY at 6.8 s and never ERROR, so the
    "lost for 3s/5s -> error -> ready" scenarios could not pass, and the 1 s one raced. With a
    0.5 s re-open delay and a 1 s grace period every scenario's event order is deterministic:
    STALE ~0.5 s after the loss, ERROR ~1.5 s after it, READY shortly after the daemon is back
    (measured for 1 s and 3 s outages, RPC and in-process).
    """
    return {
        "resolver_type": world.resolver,
        "host": "localhost",
        "port": port,
        "deadline_ms": 1000,
        "stream_deadline_ms": 0,
        "retry_backoff_ms": 1000,
        "retry_backoff_max_ms": 500,  # upstream: provider default (5000 in 0.6.1)
        "retry_grace_period": 1,  # upstream: 3
    }


@step(r"a (?P<provider_type>\w+) flagd provider")
def setup_provider(world: World, provider_type: str) -> None:
    wait = True
    if provider_type not in (*PROVIDER_LAUNCHPAD_CONFIG, "unavailable"):
        raise AssertionError(
            f"'{provider_type}' flagd provider is not supported by this harness "
            "(see the exclusion table in test_conformance.py)"
        )
    launchpad = world.need_launchpad()
    if world.mode == FILE:
        # no daemon: the provider reads the launchpad's files (upstream: the merged file, or
        # for a `rawflags/...` selector that raw file)
        launchpad.prepare_files()
        options = _base_options(world, 0)
        del options["port"]
        selector = str(world.option_values.get("selector", ""))
        if provider_type == "unavailable":
            path = launchpad.workdir / "no-such-flags.json"
            wait = False
        elif selector.startswith("rawflags/"):
            path = launchpad.workdir / selector
        else:
            path = launchpad.merged_file
        options["offline_flag_source_path"] = str(path)
    elif provider_type == "unavailable":
        options = _base_options(world, free_port())  # nothing listens there
        wait = False
    else:
        ports = launchpad.ensure_running(world.daemon_profile(provider_type))
        options = _base_options(world, ports.evaluation if world.mode == RPC else ports.sync)
    options.update(world.option_values)
    provider = FlagdProvider(**options)
    world.provider = provider
    world.domain = f"{world.mode}:{world.scenario.key}:{provider_type}"
    api.set_provider(provider, world.domain)
    world.client = api.get_client(world.domain)
    if wait:
        deadline = time.monotonic() + READY_WAIT_S
        while world.client.get_provider_status() != ProviderStatus.READY:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"provider not READY within {READY_WAIT_S}s "
                    f"(status {world.client.get_provider_status()}, options {options})"
                )
            time.sleep(0.02)


@step(r"the connection is lost for (?P<seconds>\d+)s")
def connection_lost(world: World, seconds: str) -> None:
    world.need_launchpad().restart_after(float(seconds))


@step(r"the client should be in (?P<status>\w+) state")
def client_state(world: World, status: str) -> None:
    actual = world.need_client().get_provider_status()
    assert actual == ProviderStatus[status.upper()], f"client status {actual}"


# --------------------------------------------------------------------------- context steps


@step(r'a context containing a targeting key with value "(?P<targeting_key>[^"]*)"')
def context_targeting_key(world: World, targeting_key: str) -> None:
    world.targeting_key = targeting_key


@step(
    r'a context containing a key "(?P<key>[^"]*)", with type "(?P<type_info>[^"]+)" '
    r'and with value "(?P<value>.*)"'
)
def context_key(world: World, key: str, type_info: str, value: str) -> None:
    world.attributes[key] = VALUE_CASTS[type_info](value)


@step(
    r'a context containing a nested property with outer key "(?P<outer>[^"]*)" and inner key '
    r'"(?P<inner>[^"]*)", with value "(?P<value>[^"]*)"'
)
def context_nested(world: World, outer: str, inner: str, value: str) -> None:
    nested = world.attributes.setdefault(outer, {})
    nested[inner] = value


# --------------------------------------------------------------------------- flag steps


@step(
    r'a (?P<type_info>Boolean|String|Integer|Float|Object)-flag with key "(?P<key>[^"]*)" '
    r'and a default value "(?P<default>.*)"'
)
def flag_key_and_default(world: World, type_info: str, key: str, default: str) -> None:
    world.flag = (key, default, type_info)


@step(r"the flag was evaluated with details")
def evaluate_with_details(world: World) -> None:
    key, raw_default, type_info = world.need_flag()
    client = world.need_client()
    default = VALUE_CASTS[type_info](raw_default)
    context = EvaluationContext(world.targeting_key, dict(world.attributes))
    if type_info == "Boolean":
        world.details = client.get_boolean_details(key, default, context)
    elif type_info == "String":
        world.details = client.get_string_details(key, default, context)
    elif type_info == "Integer":
        world.details = client.get_integer_details(key, default, context)
    elif type_info == "Float":
        world.details = client.get_float_details(key, default, context)
    elif type_info == "Object":
        world.details = client.get_object_details(key, default, context)
    else:
        raise AssertionError(f"unknown flag type {type_info}")


@step(r"the flag was modified")
def flag_modified(world: World) -> None:
    world.need_launchpad().change()


def _describe(details: FlagEvaluationDetails[Any]) -> str:
    return (
        f"value={details.value!r} variant={details.variant!r} reason={details.reason!r} "
        f"error_code={details.error_code!r} error_message={details.error_message!r}"
    )


@step(r'the resolved details value should be "(?P<value>.*)"')
def resolved_value(world: World, value: str) -> None:
    details = world.need_details()
    _, _, type_info = world.need_flag()
    expected = VALUE_CASTS[type_info](value)
    actual = details.value
    assert actual == expected, f"expected value {expected!r}; got {_describe(details)}"
    allowed = EXPECTED_PYTHON_TYPES[type_info]
    assert isinstance(actual, allowed) and not (isinstance(actual, bool) and bool not in allowed), (
        f"{type_info} flag resolved to a {type(actual).__name__}: {actual!r}"
    )


@step(r'the variant should be "(?P<variant>[^"]*)"')
def resolved_variant(world: World, variant: str) -> None:
    details = world.need_details()
    assert details.variant == variant, f"expected variant {variant!r}; got {_describe(details)}"


@step(r'the reason should be "(?P<reason>[^"]*)"')
def resolved_reason(world: World, reason: str) -> None:
    details = world.need_details()
    assert details.reason == reason, f"expected reason {reason!r}; got {_describe(details)}"


@step(r'the error-code should be "(?P<error_code>[^"]*)"')
def resolved_error_code(world: World, error_code: str) -> None:
    details = world.need_details()
    actual = details.error_code or ""
    assert actual == error_code, f"expected error code {error_code!r}; got {_describe(details)}"


@step(r"the resolved metadata should contain", table=True)
def metadata_contains(world: World, table: tuple[tuple[str, ...], ...]) -> None:
    details = world.need_details()
    header, *rows = table
    assert header == ("key", "metadata_type", "value"), f"unexpected table header {header}"
    metadata = dict(details.flag_metadata)
    expected = {key: VALUE_CASTS[kind](value) for key, kind, value in rows}
    assert metadata == expected, f"expected metadata {expected}; got {metadata}"
    for key, value in expected.items():  # 1 == True in Python: compare types too
        assert type(metadata[key]) is type(value), (
            f"metadata {key}: {metadata[key]!r} ({type(metadata[key]).__name__}), "
            f"expected {value!r} ({type(value).__name__})"
        )


@step(r"the resolved metadata is empty")
def metadata_empty(world: World) -> None:
    details = world.need_details()
    assert len(details.flag_metadata) == 0, f"metadata not empty: {dict(details.flag_metadata)}"


@step(r"the flag should be part of the event payload")
def flag_in_event_payload(world: World) -> None:
    key, _, _ = world.need_flag()
    assert world.last_event is not None, "no event was consumed before this step"
    changed = world.last_event.flags_changed or []
    assert key in changed, f"{key!r} not in flags_changed {changed}"


# --------------------------------------------------------------------------- event steps


@step(r"a (?P<event_type>ready|error|stale|change) event handler")
def add_event_handler(world: World, event_type: str) -> None:
    log = world.events

    def handler(details: EventDetails) -> None:
        log.record(event_type, details)

    world.need_client().add_handler(EVENTS[event_type], handler)
    world.handlers.append((EVENTS[event_type], handler))


def _consume(world: World, event_type: str, timeout: float) -> EventDetails:
    if event_type not in EVENTS:
        raise AssertionError(f"unknown event type {event_type}")
    event = world.events.consume(event_type, timeout)
    if event is None:
        extra = ""
        if world.launchpad is not None and world.launchpad.restart_errors:
            extra = "\ndaemon restart errors: " + "; ".join(world.launchpad.restart_errors)
        raise AssertionError(
            f"no {event_type} event within {timeout:g}s; events so far "
            f"{world.events.describe()} (> = cursor){extra}"
        )
    return event.details


@step(r"a (?P<event_type>\w+) event was fired")
def event_was_fired(world: World, event_type: str) -> None:
    world.last_event = _consume(world, event_type, EVENT_WAIT_S)


@step(r"the (?P<event_type>\w+) event handler should have been executed")
def handler_executed(world: World, event_type: str) -> None:
    world.last_event = _consume(world, event_type, EVENT_WAIT_S)


@step(r"the (?P<event_type>\w+) event handler should have been executed within (?P<ms>\d+)ms")
def handler_executed_within(world: World, event_type: str, ms: str) -> None:
    world.last_event = _consume(world, event_type, int(ms) / 1000)


@contextlib.contextmanager
def isolated_flagd_env() -> Iterator[None]:
    """Remove FLAGD_* variables for the duration of a scenario; restore them afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("FLAGD_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.startswith("FLAGD_")]:
            del os.environ[name]
        os.environ.update(saved)


def starts_provider(scenario: Scenario) -> bool:
    """Whether a scenario starts a provider (as opposed to only parsing provider options)."""
    return any(setup_provider in [d.func for d in find_step(s.text)] for s in scenario.steps)
