"""Two or more U-Nets side by side in one run: training and sampling throughput and peak memory, as ratios.

    python scripts/compare_unets.py unets=sr_tiny,sr_tiny_standard -- experiment=sr64_tiny bench.batch_size=16
    python scripts/compare_unets.py unets=sr256_600m,sr256_standard -- stage=sr256 bench.batch_size=8

The Efficient U-Net ablation (App. B.1: "2-3x faster"). Every measurement is one `scripts/benchmark.py` process
(train mode, then sample mode), so peak memory is per U-Net; the U-Nets alternate in rotating order for
`repeats` rounds (a shared machine drifts) and the medians over rounds are compared. Arguments after `--` go
to every benchmark (stage, batch size, steps, sampler, precision...). Prints one JSON line per measurement and
a summary line with, for each U-Net, its medians and its ratios to the first one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from imagen.cli import check_overrides

SCRIPT = Path(__file__).resolve().parent / "benchmark.py"
KEYS = {"train": ("median_s_per_step", "peak_memory_mb"), "sample": ("median_s_per_image", "peak_memory_mb")}


def parse(argv: list[str]) -> tuple[list[str], int, list[str]]:
    own, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    opts = dict(a.split("=", 1) for a in own if "=" in a)
    unknown = [a for a in own if "=" not in a or a.split("=", 1)[0] not in ("unets", "repeats")]
    if unknown or "unets" not in opts:
        raise ValueError(f"usage: compare_unets.py unets=A,B [repeats=3] -- <benchmark overrides>; got {own}")
    unets = [u for u in opts["unets"].split(",") if u]
    if len(unets) < 2:
        raise ValueError(f"unets needs at least two conf/unet options, got {unets}")
    return unets, int(opts.get("repeats", 3)), rest


def measure(unet: str, mode: str, rest: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), f"unet={unet}", f"bench.mode={mode}", "bench.repeats=1", *rest],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:  # e.g. out of memory: recorded, and the comparison goes on
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:300], "out_of_memory": "OutOfMemoryError" in last}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    try:
        unets, repeats, rest = parse(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in range(repeats):
        for unet in unets[r % len(unets) :] + unets[: r % len(unets)]:
            for mode in KEYS:
                row = measure(unet, mode, rest)
                rows.setdefault((unet, mode), []).append(row)
                print(json.dumps({"round": r, "unet_option": unet, **row}), flush=True)
    summary: dict = {"compare": unets, "repeats": repeats, "overrides": rest}
    for unet in unets:
        entry: dict = {}
        for mode, keys in KEYS.items():
            ok = [row for row in rows[(unet, mode)] if "error" not in row]
            entry.setdefault("parameters", ok[0]["unet_parameters"] if ok else None)
            if len(ok) < len(rows[(unet, mode)]):
                entry[f"{mode}_failed"] = rows[(unet, mode)][0].get("error") or "failed"
            for key in keys:
                entry[f"{mode}_{key}"] = statistics.median(row[key] for row in ok) if ok else None
        summary[unet] = entry
    base = summary[unets[0]]

    def ratio(unet: str, key: str) -> float | None:
        a, b = summary[unet][key], base[key]
        return None if a is None or b is None else round(a / b, 3)

    for unet in unets[1:]:  # > 1: the first U-Net is faster / leaner by that factor (None: a side failed)
        summary[f"{unet}_vs_{unets[0]}"] = {
            "train_time_ratio": ratio(unet, "train_median_s_per_step"),
            "sample_time_ratio": ratio(unet, "sample_median_s_per_image"),
            "train_memory_ratio": ratio(unet, "train_peak_memory_mb"),
            "sample_memory_ratio": ratio(unet, "sample_peak_memory_mb"),
        }
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    rest = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []  # what every benchmark gets
    check_overrides(rest, hydra_app=False, skip=("bench.",))
    main(sys.argv[1:])
