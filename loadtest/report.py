"""A Locust run in a few lines: transactions per second and p95 per kind, failures, failover.

    python loadtest/report.py out     # out_stats.csv, out_failures.csv, out_stats_history.csv

From the files ``locust --csv out`` writes it prints, per request type and
name (REGISTER register, INVITE setup...), the count, failures, requests
per second, median and p95 in ms (``bench_register.py`` and
``bench_call.py`` print their SIPp run's ``REGISTER register`` and ``INVITE
setup`` rows in the same columns, :func:`sipp_row`, so they set side by
side); then the
failures by SIP status; then, from the per-second history, when failures
were seen: the first and last second with new failures and how long the run
took to recover (the failover window when a node was killed during it).
"""

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One request kind of the run."""

    kind: str
    """Locust request type and name, e.g. ``INVITE setup``."""
    count: int
    """Requests made."""
    failures: int
    """Requests that failed."""
    rate: float
    """Requests per second over the run."""
    median_ms: float
    """Median response time."""
    p95_ms: float
    """95th percentile response time."""


@dataclass(frozen=True)
class Summary:
    """What :func:`summarise` reads from one run's CSV files."""

    rows: list[Row]
    """Every request kind, then the aggregate (kind ``all``)."""
    failures: list[tuple[str, str, int]]
    """(kind, error, occurrences), the most frequent first."""
    failing_from: float | None
    """Seconds into the run of the first second with a new failure (None: none)."""
    failing_until: float | None
    """Seconds into the run of the last second with a new failure."""
    length: float
    """Seconds from the first to the last history row."""


def _read(path: str) -> list[dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0


def summarise(prefix: str) -> Summary:
    """Read ``<prefix>_stats.csv`` (required), ``_failures.csv`` and ``_stats_history.csv``."""
    stats = _read(prefix + "_stats.csv")
    if not stats:
        raise FileNotFoundError(
            f"{prefix}_stats.csv is missing or empty: was locust run with --csv {prefix}?"
        )
    rows = [
        Row(
            "all" if r["Name"] == "Aggregated" else f"{r['Type']} {r['Name']}",
            int(r["Request Count"]),
            int(r["Failure Count"]),
            _number(r["Requests/s"]),
            _number(r["50%"]),
            _number(r["95%"]),
        )
        for r in stats
    ]
    failures = sorted(
        (
            (f"{r['Method']} {r['Name']}", r["Error"], int(r["Occurrences"]))
            for r in _read(prefix + "_failures.csv")
        ),
        key=lambda f: -f[2],
    )
    history = [r for r in _read(prefix + "_stats_history.csv") if r["Name"] == "Aggregated"]
    start = _number(history[0]["Timestamp"]) if history else 0.0
    seconds = []
    last = 0
    for r in history:
        total = int(_number(r["Total Failure Count"]))
        if total > last:
            seconds.append(_number(r["Timestamp"]) - start)
        last = total
    return Summary(
        rows,
        failures,
        seconds[0] if seconds else None,
        seconds[-1] if seconds else None,
        _number(history[-1]["Timestamp"]) - start if history else 0.0,
    )


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank ``fraction`` percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def sipp_row(kind: str, result) -> Row:
    """A SIPp run (``loadtest.harness.run_sipp`` with ``rtt``) as a report row: its calls,
    failed calls, successful calls per second and the median and p95 of the response
    time its scenario measures (``rtd``: from the call's start, as Locust's kinds)."""
    return Row(
        kind,
        result.successful + result.failed,
        result.failed,
        result.successful / result.elapsed if result.elapsed > 0 else 0.0,
        percentile(result.rtt_ms, 0.5),
        percentile(result.rtt_ms, 0.95),
    )


def format_rows(rows: list[Row]) -> list[str]:
    """The table of ``rows``: a header, then one line per row."""
    lines = [f"{'kind':<20}{'count':>8}{'failed':>8}{'per s':>9}{'median ms':>11}{'p95 ms':>9}"]
    return lines + [
        f"{r.kind:<20}{r.count:>8}{r.failures:>8}{r.rate:>9.1f}{r.median_ms:>11.0f}{r.p95_ms:>9.0f}"
        for r in rows
    ]


def format_summary(s: Summary) -> str:
    """The report's text."""
    lines = format_rows(s.rows)
    if s.failures:
        lines += ["", "failures:"]
        lines += [f"  {n:>6}  {kind}: {error}" for kind, error, n in s.failures]
    if s.failing_from is None:
        lines += ["", f"no failure in {s.length:.0f} s"]
    else:
        assert s.failing_until is not None
        lines += [
            "",
            f"failures from {s.failing_from:.0f} s to {s.failing_until:.0f} s into "
            f"the run: recovered {s.failing_until - s.failing_from + 1:.0f} s after the "
            f"first ({s.length:.0f} s in all)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the report of the run whose CSV files start with the given prefix."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prefix", help="the --csv prefix given to locust")
    args = parser.parse_args(argv)
    try:
        summary = summarise(args.prefix)
    except FileNotFoundError as e:
        sys.stderr.write(f"{e}\n")
        return 2
    sys.stdout.write(format_summary(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
