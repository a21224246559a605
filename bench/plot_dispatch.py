"""Plot the dispatch grid: the JSON lines that `bench/dispatch_latency.py --out FILE` appends.

    .venv/bin/python bench/plot_dispatch.py var/bench/dispatch-grid.jsonl docs/img/dispatch-latency.png

One panel per figure (escalation -> offer, accept -> assigned), p50 and p99
against the escalation rate asked for, a line per number of connected agents,
with the floor (one transaction plus one channel-layer round trip) measured in
the same runs and the issue's 50 ms goal for reference.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, target: str) -> None:
    rows = [json.loads(line) for line in open(source) if line.strip()]
    by_agents: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_agents[row["agents"]].append(row)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for colour, (agents, runs) in zip(colours, sorted(by_agents.items()), strict=False):
        runs.sort(key=lambda r: r["rate"])
        rates = [r["rate"] for r in runs]
        for ax, key in zip(axes[:2], ("offer", "assigned"), strict=True):
            ax.plot(rates, [r[key][1] for r in runs], "o-", color=colour, label=f"{agents:,} agents p99")
            ax.plot(rates, [r[key][0] for r in runs], "s--", color=colour, alpha=0.6, label=f"{agents:,} agents p50")
        axes[2].plot(rates, [r["offer_rate"] for r in runs], "o-", color=colour, label=f"{agents:,} agents")
    floor = [r["floor"][1] for r in rows]
    for ax, title in zip(axes[:2], ("escalation → offer", "accept → assigned"), strict=True):
        ax.axhline(50, color="grey", linestyle=":", label="goal: p99 50 ms")
        ax.axhline(max(floor), color="black", linestyle="-.", linewidth=1, label="floor p99 (max over runs)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("escalations per second asked")
        ax.set_ylabel("latency (ms)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    top = max(r["rate"] for r in rows)
    axes[2].plot([1, top], [1, top], color="grey", linestyle=":", label="asked")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("escalations per second asked")
    axes[2].set_ylabel("offers per second achieved")
    axes[2].set_title("throughput")
    axes[2].grid(True, which="both", alpha=0.3)
    axes[2].legend(fontsize=7)
    figure.suptitle("Dispatch on one 2-core machine (servers, PostgreSQL, Redis and the load generators together)")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
