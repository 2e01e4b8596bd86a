"""Render the tables of RESULTS.md from results.json, overhead.json and padding.json.

    python -m benchmarks.report > /tmp/tables.md

(so the numbers in RESULTS.md are the measured ones, not retyped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NAMES = ["tokenizer alone", "torchseq", "torchseq pretokenized", "hand-written", "hf datasets",
         "webdataset", "datapipes", "torchdata.nodes"]


def compare_tables(report: dict[str, Any]) -> str:
    summary, info = report["summary"], report["info"]
    lines = [
        f"Command: `{info['command']}` — {info['rounds']} interleaved rounds, {info['time_shards']} of 8 shards "
        f"per timed epoch ({summary['torchseq|0']['pairs']:,} pairs), {info['cpus']} CPUs, "
        f"load average at start {info['load_start']}, after each round {info['loads_after_rounds']}, "
        f"{info['minutes']} minutes.",
        "",
        "| system | workers | median s | pairs/s | first batch s | x tokenizer alone | runs (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    base = summary["tokenizer alone|0"]["pairs_per_second"]
    for name in NAMES:
        for workers in (0, 2):
            entry = summary.get(f"{name}|{workers}")
            if entry is None:
                continue
            runs = ", ".join(f"{s:.2f}" for s in entry["seconds"])
            lines.append(
                f"| {name} | {workers} | {entry['median_seconds']:.2f} | {entry['pairs_per_second']:,.0f} | "
                f"{entry['median_first_batch_seconds']:.2f} | {entry['pairs_per_second'] / base:.2f} | {runs} |"
            )
    lines += ["", "| ratio of medians | value |", "|---|---|"]
    for key, value in report["ratios"].items():
        lines.append(f"| {key} | {value:.2f} |")
    lines += ["", f"Best peer: {info['best_peer']}.", "", "Verification (before timing):", "",
              "| system | workers | shards | delivered | expected | missing | unexpected | identical |",
              "|---|---|---|---|---|---|---|---|"]
    for v in report["verify"]:
        lines.append(f"| {v['system']} | {v['workers']} | {v['shards']} | {v['delivered']:,} | {v['expected']:,} | "
                     f"{v['missing']} | {v['unexpected']} | {'yes' if v['ok'] else 'NO'} |")
    return "\n".join(lines)


def overhead_tables(overhead: dict[str, Any]) -> str:
    lines = [f"Load average at start {overhead['load_start']}, at end {overhead['load_end']}.", "",
             "| pass-through stage | µs per element per stage |", "|---|---|"]
    for name, value in overhead["pass_through_us_per_element_per_stage"].items():
        lines.append(f"| {name} | {value:.3f} |")
    lines += ["", "| pipeline, 2 workers | time to first batch (s, median of 5) |", "|---|---|"]
    for name, value in overhead["first_batch_seconds_2_workers"].items():
        lines.append(f"| {name} | {value:.3f} |")
    lines += ["", "| peak RSS, 2 workers | pairs | main MiB | largest worker MiB |", "|---|---|---|---|"]
    for name, value in overhead["peak_rss"].items():
        lines.append(f"| {name} | {value['pairs']:,} | {value['main_mib']:.0f} | {value['worker_mib']:.0f} |")
    return "\n".join(lines)


def padding_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| batching | real / padded tokens | batches | mean batch size |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| `{row['setup']}` | {row['efficiency']:.3f} | {row['batches']} | "
                     f"{row['mean_batch_size']:.1f} |")
    return "\n".join(lines)


def ceiling_table(ceiling: dict[str, Any]) -> str:
    runs = {name: ", ".join(f"{s:.3f}" for s in values) for name, values in ceiling["times"].items()}
    lines = [f"{ceiling['pairs']:,} pairs in {ceiling['batches']} batches per epoch, 2 workers.", "",
             "| loader, 2 workers | median s | pairs/s | x on the fly (2 workers) | runs (s) |",
             "|---|---|---|---|---|"]
    on_the_fly = ceiling.get("on_the_fly_2w_seconds")
    labels = {"floor": f"{ceiling['batches']} ints, no tensors (the DataLoader alone)",
              "ceiling": "ready batches from memory (no work)",
              "pretokenized": "torchseq pretokenized -> bucket -> collate"}
    for name, label in labels.items():
        if name not in ceiling["medians"]:
            continue
        median = ceiling["medians"][name]
        ratio = f"{on_the_fly / median:.1f}" if on_the_fly else "-"
        rate = f"{ceiling['pairs_per_s'][name]:,.0f}" if name in ceiling["pairs_per_s"] else "-"
        lines.append(f"| {label} | {median:.3f} | {rate} | {ratio} | {runs[name]} |")
    if on_the_fly:
        lines.append(f"| torchseq on the fly (median of results.json) | {on_the_fly:.3f} | "
                     f"{ceiling['pairs'] / on_the_fly:,.0f} | 1.0 | |")
    return "\n".join(lines)


def main() -> None:
    for name, render in (("results.json", compare_tables), ("overhead.json", overhead_tables),
                         ("padding.json", padding_table), ("ceiling.json", ceiling_table)):
        path = HERE / name
        if path.exists():
            print(f"<!-- {name} -->")
            print(render(json.loads(path.read_text())))
            print()


if __name__ == "__main__":
    main()
