#!/usr/bin/env python3
"""Draws the soak's samples (baton-benchmark soak --csv FILE) as one PNG: a panel per figure, a line per
process, the kill -9s as vertical marks and the warm-up (before retention applies) shaded.

    soak-plot.py SAMPLES.csv OUT.png [--warm-up SECONDS] [--title TEXT]
"""
import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("rss_mb", "resident memory (MB)", ["orders", "inventory", "shipping", "fulfillment"]),
    ("rss_mb", "broker resident memory (MB)", ["broker"]),
    ("fds", "open file descriptors", None),
    ("wal_mb", "WAL file (MB)", None),
    ("outbox", "outbox rows (waiting for the relay)", None),
    ("inbox", "inbox rows (handled message ids)", None),
    ("transitions", "process transitions (fulfillment)", ["fulfillment"]),
    ("db_mb", "store file (MB: orders, stock, shipments grow with the business)", None),
]
SERVICES = ["orders", "inventory", "shipping", "fulfillment"]


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples")
    parser.add_argument("output")
    parser.add_argument("--warm-up", type=float, default=0)
    parser.add_argument("--title", default="Baton soak")
    arguments = parser.parse_args()

    samples = read(arguments.samples)
    kills_path = arguments.samples[:-4] + "-kills.csv" if arguments.samples.endswith(".csv") else ""
    kills = read(kills_path) if os.path.exists(kills_path) else []
    if not samples:
        sys.exit("soak-plot.py: no samples in " + arguments.samples)

    figure, axes = plt.subplots(4, 2, figsize=(14, 13), sharex=True)
    for axis, (field, title, processes) in zip(axes.flat, PANELS):
        for process in processes or SERVICES:
            points = [
                (float(row["seconds"]) / 60, float(row[field]))
                for row in samples
                if row["process"] == process and row.get(field)
            ]
            if points:
                axis.plot(*zip(*points), label=process, linewidth=1)
        for kill in kills:
            axis.axvline(float(kill["seconds"]) / 60, color="red", alpha=0.25, linewidth=0.8)
        if arguments.warm_up > 0:
            axis.axvspan(0, arguments.warm_up / 60, color="grey", alpha=0.12)
        axis.set_title(title, fontsize=10)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8, loc="lower right")
    for axis in axes[-1]:
        axis.set_xlabel("minutes")
    figure.suptitle(
        f"{arguments.title} — red: kill -9 of a service ({len(kills)}), grey: before retention applies",
        fontsize=12,
    )
    figure.tight_layout()
    figure.savefig(arguments.output, dpi=90)
    print(f"soak-plot.py: wrote {arguments.output}")


if __name__ == "__main__":
    main()
