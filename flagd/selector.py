"""The `Flagd-Selector` expression: which flag set or source a request is scoped to (spec C.4)."""

from __future__ import annotations

from dataclasses import dataclass


class SelectorError(ValueError):
    """An unparseable selector; the services answer INVALID_ARGUMENT."""


@dataclass(frozen=True, slots=True)
class Selector:
    """Exactly one of: all flags (both None), one flag set, or one source."""

    flag_set_id: str | None = None  # "" selects the unnamed (null) set
    source: str | None = None

    @property
    def is_all(self) -> bool:
        """True when the selector does not narrow anything."""
        return self.flag_set_id is None and self.source is None

    def reflection(self) -> dict[str, str]:
        """The selector echoed into response metadata (spec A.7)."""
        out: dict[str, str] = {}
        if self.flag_set_id is not None:
            out["flagSetId"] = self.flag_set_id
        if self.source is not None:
            out["source"] = self.source
        return out


ALL = Selector()


def parse_selector(expression: str | None) -> Selector:
    """Parse `flagSetId=x`, `source=y` or a bare source name; empty means all flags."""
    if expression is None:
        return ALL
    text = expression.strip()
    if not text:
        return ALL
    if "=" not in text:
        return Selector(source=text)
    key, _, value = text.partition("=")
    key = key.strip()
    value = value.strip()
    if key == "flagSetId":
        return Selector(flag_set_id=value)
    if key == "source":
        return Selector(source=value)
    raise SelectorError(
        f"flagd-selector: unsupported key {key!r} in {expression!r}; "
        "use flagSetId=<set>, source=<uri> or a bare source uri"
    )
