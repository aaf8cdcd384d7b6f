"""Compare the runs of an ablation sweep: a markdown table and pareto plots, with the spread across seeds.

Two sources give the same records:
- run folders (`from_sweep_dirs`): `multirun/<ablation>/<job>/job.json` and `<job>/eval/<combination>/metrics.json`,
  or their copies made by `archive_jobs` (committed under experiments/results/<ablation>/jobs/);
- W&B (`from_wandb`): the train runs (job_type=train) and eval runs (job_type=eval) of one group.

A record is one evaluation of one job: its arm (the settings that differ between the sweep's jobs, seed left out,
plus the evaluation's own combination such as thresholding=none), its seed, and its guidance-sweep rows.
Arms are then averaged over seeds; the spread is reported as [min, max] (2-3 seeds: a range says more than a sd).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from imagen.eval.pareto import save_figure  # noqa: E402

IGNORED_KEYS = {
    "seed",
    "data.gen_procs",
    "skip_completed",
    "experiment",
    "sweep",
}  # never an arm: replication, plumbing, names


@dataclass
class Record:
    job: str
    arm: dict[str, str]
    seed: int | None
    status: str
    error: str | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    train_loss: float | None = None
    alignment_key: str = "judge/accuracy"
    results: list[dict[str, Any]] = field(default_factory=list)  # one row per guidance weight
    loss_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def final_loss(self) -> float | None:
        """The mean of the last 5 logged training losses (one batch's loss is too noisy to compare), else the last."""
        tail = [v for _, v in self.loss_curve[-5:]]
        return sum(tail) / len(tail) if tail else self.train_loss

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.arm.items())) or "all"


def _parse_override(o: str) -> tuple[str, str]:
    key, _, value = o.partition("=")
    return key.lstrip("+~"), value


def varying(settings: list[dict[str, str]]) -> set[str]:
    """Keys whose value is not the same in every job (a key missing from some jobs varies too)."""
    keys = {k for s in settings for k in s}
    return {k for k in keys if len({s.get(k) for s in settings}) > 1} - IGNORED_KEYS


def _loss_curve(metrics_csv: Path) -> list[tuple[int, float]]:
    if not metrics_csv.is_file():
        return []
    with open(metrics_csv) as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def _job_dirs(sweep_dirs: list[str | Path]) -> list[Path]:
    """The job folders (with a job.json) of sweep folders or job folders."""
    jobs = []
    for d in map(Path, sweep_dirs):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} is not a folder (give a sweep folder such as multirun/conditioning_tiny)")
        jobs += [d] if (d / "job.json").is_file() else sorted(p.parent for p in d.glob("*/job.json"))
    if not jobs:
        raise FileNotFoundError(f"no job.json under {', '.join(map(str, sweep_dirs))}: not a sweep of train.py -m")
    return jobs


def _evaluations(job: Path) -> list[tuple[str, Path]]:
    """(name, metrics.json) of each evaluation of a job: `eval/<name>/metrics.json` in a run folder; in an archived
    one (archive_jobs) `metrics.json` for the default evaluation and `metrics_<name>.json` for the others."""
    found = [(p.parent.name, p) for p in sorted((job / "eval").glob("*/metrics.json"))]
    if not found:
        found = [
            ("default" if p.name == "metrics.json" else p.stem.removeprefix("metrics_"), p)
            for p in sorted(job.glob("metrics*.json"))
        ]
    return found


def archive_jobs(sweep_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Copy what a comparison reads of each job into `out_dir/<job>/`: job.json, metrics.csv (the loss curve) and
    every evaluation's metrics.json (as metrics.json / metrics_<name>.json). A few kB per job, small enough to commit
    beside the tables so they can be rebuilt (`from_sweep_dirs([out_dir])`) after the run folders are gone."""
    jobs = _job_dirs(sweep_dirs)
    names = [job.name for job in jobs]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"jobs named {', '.join(twice)} come from several folders: archive each folder on its own")
    out = []
    for job in jobs:
        dest = Path(out_dir) / job.name
        if dest.resolve() == job.resolve():  # already archived here
            out.append(dest)
            continue
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("job.json", "metrics.csv"):
            if (job / name).is_file():
                shutil.copyfile(job / name, dest / name)
        for name, metrics in _evaluations(job):
            shutil.copyfile(metrics, dest / ("metrics.json" if name == "default" else f"metrics_{name}.json"))
        out.append(dest)
    return out


def from_sweep_dirs(sweep_dirs: list[str | Path]) -> list[Record]:
    """Records from run folders (one or more sweep folders, or job folders), or from their archive_jobs copies."""
    jobs = _job_dirs(sweep_dirs)
    infos = [json.loads((j / "job.json").read_text()) for j in jobs]
    # The group choices (cond=cross_attn, also when it was the default) and the command-line overrides.
    settings = [
        {**info.get("choices", {}), **dict(_parse_override(o) for o in info.get("overrides", []))} for info in infos
    ]
    arm_keys = varying(settings)
    records = []
    for job, info, s in zip(jobs, infos, settings):
        arm = {k: s.get(k, "(default)") for k in sorted(arm_keys)}
        base = dict(
            job=str(job),
            seed=info.get("seed"),
            status=info.get("status", "?"),
            error=info.get("error"),
            train_seconds=info.get("train_seconds"),
            eval_seconds=info.get("eval_seconds"),
            train_loss=info.get("train_loss"),
            loss_curve=_loss_curve(job / "metrics.csv"),
        )
        evals = _evaluations(job)
        if not evals:
            records.append(Record(arm=arm, **base))
        for name, path in evals:
            metrics = json.loads(path.read_text())
            combo = info.get("evals", {}).get(name, {}).get("overrides")
            combo = combo if combo is not None else dict(_parse_override(o) for o in name.split(",") if "=" in o)
            records.append(
                Record(
                    arm={**arm, **{k: str(v) for k, v in combo.items()}},
                    alignment_key=metrics["alignment_key"],
                    results=metrics["results"],
                    **base,
                )
            )
    return _drop_constant_eval_keys(records)


def _drop_constant_eval_keys(records: list[Record]) -> list[Record]:
    keep = varying([r.arm for r in records])  # e.g. thresholding when every job was evaluated the same three ways
    for r in records:
        r.arm = {k: v for k, v in r.arm.items() if k in keep}
    return records


def from_wandb(path: str, group: str, api=None) -> list[Record]:
    """Records from W&B: `path` is entity/project; the train and eval runs of `group` (online)."""
    if api is None:
        import wandb

        api = wandb.Api()
    runs = list(api.runs(path, filters={"group": group}))
    if not runs:
        raise ValueError(f"no W&B runs in {path} with group {group!r}")
    train = {r.name: r for r in runs if r.job_type == "train"}
    choices = {name: dict(t.split("=", 1) for t in r.tags if "=" in t) for name, r in train.items()}
    for name, r in train.items():
        cfg = r.config.get("config", {})
        choices[name].update({"seed": str(cfg.get("seed"))})
    arm_keys = varying(list(choices.values()))
    records: list[Record] = []
    evaluated = set()
    for r in runs:
        if r.job_type != "eval":
            continue
        job, _, combo_name = r.name.partition("/eval/")
        t = train.get(job)
        if t is None:
            continue
        evaluated.add(job)
        ecfg = r.config.get("config", {})
        combo = dict(_parse_override(o) for o in combo_name.split(",") if "=" in o)
        rows = [
            {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}
            for row in r.history(samples=1000, pandas=False)
        ]
        rows = [row for row in rows if row.get("guidance") is not None]
        records.append(_wandb_record(t, choices[job], arm_keys, combo, rows, ecfg))
    for name, t in train.items():
        if name not in evaluated:
            records.append(_wandb_record(t, choices[name], arm_keys, {}, [], {}))
    return _drop_constant_eval_keys(records)


def _wandb_record(t, choice: dict, arm_keys: set[str], combo: dict, rows: list[dict], ecfg: dict) -> Record:
    summary = dict(t.summary)
    loss = [
        (int(h["trainer/global_step"] if "trainer/global_step" in h else h.get("_step", 0)), float(h["train/loss"]))
        for h in t.history(keys=["train/loss"], samples=1000, pandas=False)
        if h.get("train/loss") is not None
    ]
    seed = t.config.get("config", {}).get("seed")
    return Record(
        job=t.name,
        arm={**{k: choice.get(k, "(default)") for k in sorted(arm_keys)}, **combo},
        seed=seed,
        status="completed" if t.state == "finished" else t.state,
        train_seconds=summary.get("_runtime"),
        train_loss=summary.get("train/loss"),
        alignment_key=ecfg.get("alignment_key", "judge/accuracy") if ecfg else "judge/accuracy",
        results=rows,
        loss_curve=loss,
    )


# ------------------------------------------------------------------------------------------ aggregation
def _stats(values: list[float]) -> tuple[float, float, float] | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return sum(values) / len(values), min(values), max(values)


def fmt(stat: tuple[float, float, float] | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    mean, lo, hi = stat
    return f"{mean:.{digits}f}" if lo == hi else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def arms(records: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        out[r.label].append(r)
    return dict(sorted(out.items()))


def curve(records: list[Record], key: str) -> dict[float, tuple[float, float, float]]:
    """guidance weight -> (mean, min, max) of `key` over the arm's completed seeds (a failed or diverged job's
    evaluation, if it has one, is not a result)."""
    by_w: dict[float, list[float]] = defaultdict(list)
    for r in records:
        if r.status != "completed":
            continue
        for row in r.results:
            by_w[float(row["guidance"])].append(row.get(key))
    stats = {w: _stats(v) for w, v in sorted(by_w.items())}
    return {w: s for w, s in stats.items() if s is not None}


def markdown_table(records: list[Record], y_key: str = "fid") -> str:
    """Per arm: seeds, wall times, final loss, best FID and best alignment over the guidance sweep, and per weight."""
    groups = arms(records)
    align = next((r.alignment_key for r in records if r.results), "judge/accuracy")
    lines = [
        f"| arm | seeds | train s | eval s (all the job's evaluations) | final train loss (last 5 logged) | best {y_key.upper()} (over w) | best {align} (over w) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rs in groups.items():
        ok = [r for r in rs if r.status == "completed"]
        failed = [r for r in rs if r.status != "completed"]
        seeds = f"{len(ok)}" + (f" (+{len(failed)} {failed[0].status}: {failed[0].error})" if failed else "")
        best_y = _stats(
            [min((row[y_key] for row in r.results if row.get(y_key) is not None), default=None) for r in ok]
        )
        best_a = _stats(
            [max((row[align] for row in r.results if row.get(align) is not None), default=None) for r in ok]
        )
        lines.append(
            f"| {label} | {seeds} | {fmt(_stats([r.train_seconds for r in ok]), 0)} | "
            f"{fmt(_stats([r.eval_seconds for r in ok]), 0)} | {fmt(_stats([r.final_loss for r in ok]), 4)} | "
            f"{fmt(best_y)} | {fmt(best_a)} |"
        )
    weights = sorted({float(row["guidance"]) for r in records for row in r.results})
    if weights:
        lines += [
            "",
            f"{y_key.upper()} / {align} per guidance weight (mean [min, max] over seeds):",
            "",
            "| arm | " + " | ".join(f"w={w:g}" for w in weights) + " |",
            "|---|" + "---|" * len(weights),
        ]
        for label, rs in groups.items():
            fy, fa = curve(rs, y_key), curve(rs, align)
            cells = [f"{fmt(fy.get(w), 2)} / {fmt(fa.get(w), 2)}" if w in fy or w in fa else "-" for w in weights]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ plots
def plot_pareto_arms(
    records: list[Record], out: str | Path, y_key: str = "fid", title: str | None = None
) -> Path | None:
    """One curve per arm: the seed mean over the guidance weights (labels: w), bars spanning the seeds' min-max on
    both axes; faint lines are the individual seeds."""
    groups = {k: v for k, v in arms(records).items() if any(r.results for r in v)}
    if not groups:
        return None
    align = next(r.alignment_key for rs in groups.values() for r in rs if r.results)
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, rs in groups.items():
        fy, fa = curve(rs, y_key), curve(rs, align)
        ws = [w for w in fy if w in fa]
        xs, ys = [fa[w][0] for w in ws], [fy[w][0] for w in ws]
        (line,) = ax.plot(xs, ys, marker="o", label=f"{label} (n={len(rs)})")
        ax.errorbar(
            xs,
            ys,
            xerr=[[fa[w][0] - fa[w][1] for w in ws], [fa[w][2] - fa[w][0] for w in ws]],
            yerr=[[fy[w][0] - fy[w][1] for w in ws], [fy[w][2] - fy[w][0] for w in ws]],
            fmt="none",
            ecolor=line.get_color(),
            alpha=0.4,
            capsize=2,
        )
        for r in rs:
            pts = [(row.get(align), row.get(y_key)) for row in r.results]
            pts = [p for p in pts if None not in p]
            if pts:
                ax.plot(*zip(*pts), color=line.get_color(), alpha=0.15, lw=1)
        for w, x, y in zip(ws, xs, ys):
            ax.annotate(f"{w:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel(f"{align} (higher is better)")
    ax.set_ylabel(f"{y_key.upper()} (lower is better)")
    ax.set_title(title or "FID vs alignment over guidance weights (labels: w; bars: seed range)")
    return save_figure(fig, out, ax, legend_fontsize=7)


def plot_vs_guidance(records: list[Record], key: str, out: str | Path, title: str | None = None) -> Path | None:
    """`key` (e.g. `saturated`, the fraction of clipped pixels) against the guidance weight, one line per arm,
    bars spanning the seeds' min-max."""
    groups = {k: v for k, v in arms(records).items() if curve(v, key)}
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rs in groups.items():
        c = curve(rs, key)
        ws = list(c)
        ax.errorbar(
            ws,
            [c[w][0] for w in ws],
            yerr=[[c[w][0] - c[w][1] for w in ws], [c[w][2] - c[w][0] for w in ws]],
            marker="o",
            capsize=2,
            label=f"{label} (n={len(rs)})",
        )
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel(key)
    ax.set_title(title or f"{key} against guidance (bars: seed range)")
    return save_figure(fig, out, ax, legend_fontsize=7)


def plot_losses(records: list[Record], out: str | Path, title: str | None = None) -> Path | None:
    """Training loss against step, one colour per training arm (evaluation-only differences share a curve)."""
    seen, curves, eval_keys = set(), defaultdict(list), _eval_keys(records)
    for r in records:
        if r.loss_curve and r.job not in seen:
            seen.add(r.job)
            train_arm = ", ".join(f"{k}={v}" for k, v in sorted(r.arm.items()) if k not in eval_keys) or "all"
            curves[train_arm].append(r.loss_curve)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, cs) in enumerate(sorted(curves.items())):
        for j, c in enumerate(cs):
            steps, losses = zip(*c)
            ax.plot(steps, _smooth(losses), color=f"C{i}", alpha=0.8, lw=1, label=label if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title(title or "training loss, one line per seed")
    return save_figure(fig, out, ax, legend_fontsize=7)


def _eval_keys(records: list[Record]) -> set[str]:
    """Arm keys that only differ between evaluations of the same job (thresholding=..., aug_level=...)."""
    by_job: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_job[r.job].append(r.arm)
    return {k for arms_ in by_job.values() for k in varying(arms_)}


def _smooth(values, k: int = 5) -> list[float]:
    return [sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def write_comparison(records: list[Record], out_dir: str | Path, title: str) -> dict[str, Path]:
    """comparison.md (the table and the plots' links), pareto.png, loss.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pareto = plot_pareto_arms(records, out_dir / "pareto.png", title=f"{title}: FID vs alignment")
    loss = plot_losses(records, out_dir / "loss.png", title=f"{title}: training loss")
    saturation = plot_vs_guidance(
        records,
        "saturated",
        out_dir / "saturation.png",
        title=f"{title}: fraction of saturated pixel values (8-bit 0 or 255)",
    )
    plots = {k: v for k, v in (("pareto", pareto), ("loss", loss), ("saturation", saturation)) if v is not None}
    md = [f"# {title}", "", markdown_table(records), *(f"![{k}]({v.name})" for k, v in plots.items())]
    (out_dir / "comparison.md").write_text("\n".join(md) + "\n")
    return {"markdown": out_dir / "comparison.md", **plots}
