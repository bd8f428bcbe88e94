"""The query-string filters the dashboard's searches share: short texts, a time range
and paging, each checked (``FilterError`` says why one cannot be used)."""

from typing import Any


class FilterError(ValueError):
    """A filter of the query string that cannot be used (its message says why)."""


def texts(args, names: tuple[str, ...], out: dict[str, Any]) -> None:
    """Put the text filters ``names`` of ``args`` into ``out`` (at most 64 characters)."""
    for name in names:
        value = args.get(name, "")
        if len(value) > 64:
            raise FilterError(f"{name} is longer than 64 characters")
        out[name] = value


def range_and_page(args, out: dict[str, Any], max_limit: int) -> dict[str, Any]:
    """Put ``since``/``until`` (seconds since the epoch) and ``limit``/``offset``
    (``limit`` at most ``max_limit``) of ``args`` into ``out``; return ``out``."""
    for name in ("since", "until"):
        raw = args.get(name, "")
        try:
            out[name] = float(raw) if raw else None
        except ValueError:
            raise FilterError(f"{name} must be seconds since the epoch, not {raw[:32]!r}") from None
        if out[name] is not None and not 0 <= out[name] < 1e11:
            raise FilterError(f"{name} is out of range")
    for name, default, top in (("limit", 100, max_limit), ("offset", 0, 10**9)):
        raw = args.get(name, "")
        if raw and not raw.isdigit():
            raise FilterError(f"{name} must be a non-negative integer")
        out[name] = min(int(raw) if raw else default, top)
    return out
