"""Results: their summary (median, min-max, ratios to the baseline taken
within each repeat: trio, or a workload's own baseline row), the tables
printed at the end, the JSON file, the plot, and the progress bar shown
while the benchmark runs.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

#: The baseline every ratio is taken against...
BASELINE = "trio"

#: ...but in these workloads, whose rows are other programs: this one.
BASELINES = {"http-server": "hypercorn-trio"}


def baseline(workload: str) -> str:
    """The row a workload's ratios are taken against."""
    return BASELINES.get(workload, BASELINE)


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    decimals: int
    higher_is_better: bool = True
    ratio: bool = False  # shown with a "x trio" column (x the case's baseline)
    #: The key a run has instead of this metric when the row's host broke
    #: off (the http-server workload's download): its cell then says
    #: "broken at N MB" (the key's value).
    broken: str | None = None


#: The metrics each workload reports, in table order.
METRICS: dict[str, tuple[Metric, ...]] = {
    "echo": (
        Metric("rate", "round trips/s", 0, ratio=True),
        Metric("p50_us", "p50 us", 0, higher_is_better=False, ratio=True),
        Metric("p99_us", "p99 us", 0, higher_is_better=False),
        Metric("per_cpu", "per server CPU-s", 0, ratio=True),
        Metric("server_cores", "server cores", 2),
        Metric("client_cores", "client cores", 2),
    ),
    "accept": (
        Metric("rate", "connections/s", 0, ratio=True),
        Metric("per_cpu", "per server CPU-s", 0, ratio=True),
        Metric("server_cores", "server cores", 2),
        Metric("client_cores", "client cores", 2),
    ),
    "stream": (
        Metric("gbps", "GB/s", 2, ratio=True),
        Metric("per_cpu", "GB per CPU-s", 2, ratio=True),
        Metric("cores", "cores", 2),
    ),
    "idle": (
        Metric("kib_per_conn", "KiB per idle conn", 2, higher_is_better=False, ratio=True),
        Metric("rss_mib", "server RSS MiB", 1, higher_is_better=False),
    ),
    "file": (
        Metric("gbps", "GB/s", 2, ratio=True),
        Metric("per_cpu", "GB per server CPU-s", 2, ratio=True),
        Metric("server_cores", "server cores", 2),
        Metric("client_cores", "client cores", 2),
    ),
    # The client is measured here (every thread of its process); the
    # server is the fixed C responder.
    "http-client": (
        Metric("rate", "requests/s", 0),
        Metric("req_per_cpu", "requests per client CPU-s", 0, ratio=True),
        Metric("client_cores", "client cores", 2),
        Metric("server_cores", "server cores", 2),
        Metric("dl_gbps", "download GB/s", 2),
        Metric("dl_per_cpu", "download GB per client CPU-s", 2, ratio=True),
        Metric("dl_client_cores", "download client cores", 2),
        Metric("dl_server_cores", "download server cores", 2),
    ),
    # The server is measured (every thread), under the C load generator.
    "http-server": (
        Metric("rate", "requests/s", 0),
        Metric("req_per_cpu", "requests per server CPU-s", 0, ratio=True),
        Metric("server_cores", "server cores", 2),
        Metric("client_cores", "client cores", 2),
        Metric("file_gbps", "file GB/s", 2, broken="file_broken_mb"),
        Metric("file_per_cpu", "file GB per server CPU-s", 2, ratio=True, broken="file_broken_mb"),
        Metric("file_server_cores", "file server cores", 2),
        Metric("file_client_cores", "file client cores", 2),
    ),
}


def headline(workload: str, param: Any) -> str:
    """The metric a case's targets judge it by (docs/benchmark.rst)."""
    return headlines(workload, param)[0]


def headlines(workload: str, param: Any) -> tuple[str, ...]:
    """The metrics a case has in the summary and the plot, the headline
    first: one for most, both throughput and CPU cost for file transfers
    (sendfile can win on either alone)."""
    if workload == "echo":
        return ("p50_us",) if param == 1 else ("per_cpu",)
    if workload == "file":
        return ("gbps", "per_cpu")
    if workload == "http-client":
        return ("req_per_cpu", "dl_per_cpu")
    if workload == "http-server":
        return ("req_per_cpu", "file_per_cpu")
    return ({"accept": "per_cpu", "stream": "gbps", "idle": "kib_per_conn"}[workload],)


def _columns(cases: list[Case]) -> list[tuple[Case, str]]:
    """(case, metric) for each column of the summary and bar group of the plot."""
    return [(case, key) for case in cases for key in headlines(case.workload, case.param)]


@dataclass
class Row:
    """One implementation in one case: its runs (None where a run failed)."""

    server: str
    status: str = "ok"  # or "not installed", "n/a", "skipped"
    runs: list[dict[str, float] | None] = field(default_factory=list)
    client_bound: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Case:
    workload: str
    param: Any
    label: str
    note: str = ""
    rows: dict[str, Row] = field(default_factory=dict)

    def row(self, server: str) -> Row:
        return self.rows.setdefault(server, Row(server))


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(case: Case, server: str, key: str) -> list[float]:
    """value / the baseline's value (trio's, or the case's own baseline
    row's), for each repeat where both ran."""
    base = case.rows.get(baseline(case.workload))
    row = case.rows.get(server)
    if base is None or row is None:
        return []
    found = []
    for mine, theirs in zip(row.runs, base.runs, strict=False):
        if mine is None or theirs is None:
            continue
        if key in mine and theirs.get(key):
            found.append(mine[key] / theirs[key])
    return found


def median_ratio(case: Case, server: str, key: str) -> float | None:
    found = ratios(case, server, key)
    return statistics.median(found) if found else None


def _values(row: Row, key: str) -> list[float]:
    return [run[key] for run in row.runs if run is not None and key in run]


# --- text -------------------------------------------------------------------------


def _number(value: float, decimals: int) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{decimals}f}"


def _cell(values: list[float], decimals: int, broken: list[float] | None = None) -> str:
    if not values:
        if broken:
            return f"broken at {_cell(broken, 1)} MB"
        return "-"
    middle = _number(statistics.median(values), decimals)
    if len(values) == 1:
        return middle
    return f"{middle} [{_number(min(values), decimals)}-{_number(max(values), decimals)}]"


def _note(row: Row, workload: str = "") -> str:
    if row.status != "ok":
        return row.status
    notes = []
    bound = sum(row.client_bound)
    if bound:
        # In the http-client workload the client is measured and the server
        # is the fixed peer that may be the bottleneck.
        peer = "server" if workload == "http-client" else "client"
        notes.append(f"{peer}-bound {bound}/{len(row.client_bound)}")
    broken = sum(
        run is not None and any(m.broken in run for m in METRICS.get(workload, ()) if m.broken)
        for run in row.runs
    )
    if broken:
        notes.append(f"broken {broken}/{len(row.runs)}")
    failed = sum(run is None for run in row.runs)
    if failed:
        notes.append(f"failed {failed}/{len(row.runs)} (errors below)")
    return "; ".join(notes)


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("| " + " | ".join(cells).rstrip() + " |")
    return "\n".join(out)


def case_table(case: Case) -> str:
    metrics = METRICS[case.workload]
    header = ["server"]
    for metric in metrics:
        header.append(metric.header)
        if metric.ratio:
            header.append(f"x {baseline(case.workload)}")
    header.append("note")
    lines = []
    for server, row in case.rows.items():
        line = [server]
        for metric in metrics:
            broken = _values(row, metric.broken) if metric.broken else None
            line.append(_cell(_values(row, metric.key), metric.decimals, broken))
            if metric.ratio:
                found = median_ratio(case, server, metric.key)
                line.append("-" if found is None else f"{found:.2f}")
        line.append(_note(row, case.workload))
        lines.append(line)
    return _table(header, lines)


def summary_table(cases: list[Case]) -> str:
    """Servers by cases: the headline metrics' median ratios to the baseline
    (trio, or the case's own: its header names it)."""
    servers: list[str] = []
    for case in cases:
        servers.extend(s for s in case.rows if s not in servers)
    columns = _columns(cases)
    header = ["server"]
    for case, key in columns:
        better = "lower" if key in ("p50_us", "kib_per_conn") else "higher"
        against = baseline(case.workload)
        versus = "" if against == BASELINE else f", x {against}"
        header.append(f"{case.label}: {_short(key, case.workload)} ({better} better{versus})")
    lines = []
    for server in servers:
        line = [server]
        for case, key in columns:
            found = median_ratio(case, server, key)
            if found is None and _broken(case, server, key):
                line.append("broken")
            else:
                line.append("-" if found is None else f"{found:.2f}")
        lines.append(line)
    return _table(header, lines)


def _broken(case: Case, server: str, key: str) -> bool:
    """Whether ``server``'s host broke off in every run of ``case`` where it
    ran, so that ``key`` has no figure."""
    row = case.rows.get(server)
    metric = next((m for m in METRICS[case.workload] if m.key == key), None)
    if row is None or metric is None or metric.broken is None:
        return False
    return bool(_values(row, metric.broken)) and not _values(row, key)


def _short(key: str, workload: str = "") -> str:
    if workload == "http-server" and key == "req_per_cpu":
        return "requests per server CPU-s"
    return {
        "p50_us": "p50",
        "per_cpu": "per CPU-s",
        "gbps": "GB/s",
        "kib_per_conn": "KiB/conn",
        "req_per_cpu": "requests per client CPU-s",
        "dl_per_cpu": "download per client CPU-s",
        "file_per_cpu": "file per server CPU-s",
    }.get(key, key)


def render(cases: list[Case], meta: dict[str, Any]) -> str:
    parts = [
        f"traffic benchmark ({meta['backend']} backend): pin={meta['pin']}, "
        f"{meta['repeat']} repeat(s), "
        f"{meta['seconds']} s per measurement; cells are median [min-max]; "
        f"'x trio' is the median of ratios to trio taken within each repeat"
        + "".join(
            f" ('x {baseline(workload)}' in the {workload} workload: to that row)"
            for workload in dict.fromkeys(case.workload for case in cases)
            if baseline(workload) != BASELINE
        )
        + ".",
    ]
    parts.extend(f"note: {note}" for note in meta.get("notes", []))
    for case in cases:
        title = f"\n## {case.label}"
        if case.note:
            title += f"  ({case.note})"
        parts.append(title)
        parts.append(case_table(case) if case.rows else "(nothing ran)")
        for server, row in case.rows.items():
            parts.extend(f"error: {server}: {error}" for error in dict.fromkeys(row.errors))
    parts.append(
        "\n## Summary: headline metrics, ratio to trio or the named baseline "
        "(median of per-repeat ratios)"
    )
    parts.append(summary_table(cases))
    return "\n".join(parts)


# --- JSON ---------------------------------------------------------------------------


def to_json(cases: list[Case], meta: dict[str, Any]) -> dict[str, Any]:
    out_cases = []
    for case in cases:
        rows = {}
        for server, row in case.rows.items():
            keys = [m.key for m in METRICS[case.workload]]
            rows[server] = {
                "status": row.status,
                "runs": row.runs,
                "client_bound": row.client_bound,
                "errors": row.errors,
                "summary": {k: summary(_values(row, k)) for k in keys},
                "ratio_to_baseline": {k: median_ratio(case, server, k) for k in keys},
                "ratios_to_baseline_per_repeat": {k: ratios(case, server, k) for k in keys},
            }
            if baseline(case.workload) == BASELINE:  # the names from before baselines
                rows[server]["ratio_to_trio"] = rows[server]["ratio_to_baseline"]
                rows[server]["ratios_to_trio_per_repeat"] = rows[server][
                    "ratios_to_baseline_per_repeat"
                ]
        out_cases.append(
            {
                "workload": case.workload,
                "param": case.param,
                "label": case.label,
                "note": case.note,
                "baseline": baseline(case.workload),
                "headline": headline(case.workload, case.param),
                "headlines": list(headlines(case.workload, case.param)),
                "results": rows,
            }
        )
    return {"meta": meta, "cases": out_cases}


def write_json(path: Path, cases: list[Case], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(to_json(cases, meta), indent=2) + "\n")


# --- plot ---------------------------------------------------------------------------


def plot(path: Path, cases: list[Case], meta: dict[str, Any]) -> str | None:
    """Bar chart of the headline ratios to the baseline (trio, or the
    case's own); None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'traffic[bench]'): no plot"
    bases = {baseline(case.workload) for case in cases}
    servers: list[str] = []
    for case in cases:
        servers.extend(s for s in case.rows if s not in servers and s not in bases)
    if not servers or not cases:
        return "nothing to plot"
    columns = _columns(cases)
    width = 0.8 / len(servers)
    # The default cycle has ten colours: more servers would share them.
    palette = [plt.get_cmap("tab20")(i) for i in range(20)] if len(servers) > 10 else None
    figure, axes = plt.subplots(figsize=(max(8.0, 1.6 * len(columns) + 2), 5))
    for i, server in enumerate(servers):
        heights = []
        offset = (i - (len(servers) - 1) / 2) * width
        for c, (case, key) in enumerate(columns):
            if _broken(case, server, key):  # no bar: say why
                axes.text(
                    c + offset,
                    0.02,
                    "broken",
                    transform=axes.get_xaxis_transform(),
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
            found = median_ratio(case, server, key)
            # Lower-is-better metrics are inverted so taller is always better.
            if found and key in ("p50_us", "kib_per_conn"):
                found = 1.0 / found
            heights.append(found or 0.0)
        axes.bar(
            [c + offset for c in range(len(columns))],
            heights,
            width,
            label=server,
            color=palette[i % len(palette)] if palette else None,
        )
    axes.set_yscale("log")  # the C reference is 10x to 100x off in places
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(columns)))
    axes.set_xticklabels(
        [f"{c.label}\n{_short(key, c.workload)}" for c, key in columns], fontsize=8
    )
    against = " or ".join(sorted(bases))
    axes.set_ylabel(f"x {against} (taller is better; latency and KiB inverted)")
    axes.set_title(
        f"traffic benchmark, ratio to {against} (pin={meta['pin']}, {meta['repeat']} rep.)"
    )
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return None


# --- progress ---------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (one line per step when not a tty)."""

    WIDTH = 28

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.started = time.monotonic()
        self.tty = stream.isatty()
        self.last = 0

    def step(self, label: str) -> None:
        """Announce the step about to run."""
        elapsed = time.monotonic() - self.started
        eta = ""
        if self.done:
            left = elapsed / self.done * (self.total - self.done)
            eta = f" ETA {int(left) // 60}:{int(left) % 60:02d}"
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        text = f"[{bar}] {self.done + 1}/{self.total}{eta} {label}"
        if self.tty:
            pad = max(self.last - len(text), 0)
            self.stream.write("\r" + text + " " * pad)
            self.last = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        text = f"done: {self.done} runs in {int(elapsed) // 60}:{int(elapsed) % 60:02d}"
        if self.tty:
            self.stream.write("\r" + text + " " * max(self.last - len(text), 0) + "\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
