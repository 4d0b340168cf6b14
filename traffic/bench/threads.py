"""``python -m traffic.bench.threads``: where an echo server's CPU goes, by thread.

Runs the echo workload against each named server (the same servers and C
client as ``python -m traffic.bench``) and reads every server thread's
``/proc`` counters over the measured window: user and system CPU in
microseconds per round trip, and voluntary and involuntary context switches
per round trip.  It shows what the totals of the benchmark cannot: how much
of traffic's cost is the trio thread, how much the ``traffic-cycle``
thread, and how often one wakes or preempts the other.  A profiling aid,
one run per server, not a benchmark: compare rows of one invocation.

Example: ``python -m traffic.bench.threads --connections 100 traffic-trio trio``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import build, servers, workloads


@dataclass(frozen=True)
class ThreadTimes:
    """One thread's counters: CPU in clock ticks, context switches."""

    name: str
    user: int
    system: int
    voluntary: int
    involuntary: int


def thread_times(pid: int) -> dict[int, ThreadTimes]:
    """The counters of every thread of process ``pid``, by thread id."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        switches = {
            key: int(value)
            for key, _, value in (line.partition(":") for line in status.splitlines())
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
        }
        found[int(task.name)] = ThreadTimes(
            name,
            int(fields[11]),
            int(fields[12]),
            switches["voluntary_ctxt_switches"],
            switches["nonvoluntary_ctxt_switches"],
        )
    return found


def measure(
    name: str, connections: int, seconds: float, placement: workloads.Placement
) -> list[str]:
    """Lines of the per-thread table of server ``name``."""
    binaries = build.build_all()
    files = connections + 256
    with workloads.running_server(name, placement, binaries, files=files) as server:
        client = workloads._client(
            binaries["echo_client"],
            ["127.0.0.1", server.port, connections, seconds, workloads.ECHO_SIZE, 0.5],
            placement,
            files,
        )
        workloads._expect(client, name, "start")
        before = thread_times(server.pid)
        line = workloads._expect(client, name, "")
        after = thread_times(server.pid)
        client.communicate()
    result = json.loads(line)
    trips = result["round_trips"]
    tick = 1e6 / workloads.CLK_TCK
    lines = [f"{name}: {trips / result['seconds']:,.0f} round trips/s, p50 {result['p50_us']} us"]
    if trips == 0:
        return lines
    for tid, end in sorted(after.items()):
        # A thread born during the window (traffic starts its cycle thread
        # with the first transit, which may be after the client said "start")
        # counts from zero.
        start = before.get(tid, ThreadTimes(end.name, 0, 0, 0, 0))
        user = (end.user - start.user) * tick / trips
        system = (end.system - start.system) * tick / trips
        voluntary = (end.voluntary - start.voluntary) / trips
        involuntary = (end.involuntary - start.involuntary) / trips
        if user + system + voluntary + involuntary == 0:
            # Listed all the same: a cycle thread that never woke is a result
            # (requests were served inline), not a thread to hide.
            lines.append(f"  {end.name:<16} slept throughout")
            continue
        lines.append(
            f"  {end.name:<16} user {user:6.2f} us/rt  system {system:6.2f} us/rt  "
            f"switches {voluntary:5.2f} voluntary + {involuntary:5.2f} preempted per rt"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m traffic.bench.threads", description=__doc__)
    parser.add_argument("servers", nargs="+", help="server names, as python -m traffic.bench has")
    parser.add_argument("--connections", type=int, default=100, help="echo connections (100)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds (3)")
    parser.add_argument("--pin", choices=["cross", "none", "same"], default="cross")
    args = parser.parse_args(argv)
    if not os.path.isdir("/proc/self/task"):
        parser.error("needs Linux's /proc")
    placement = workloads.Placement.make(args.pin)
    for name in args.servers:
        if name != workloads.C_SERVER and workloads.base_name(name) not in servers.SERVERS:
            parser.error(f"unknown server {name!r}")
        print("\n".join(measure(name, args.connections, args.seconds, placement)))


if __name__ == "__main__":
    main()
