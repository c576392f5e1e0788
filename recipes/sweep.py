"""Ablation sweeps: one command runs a grid of overrides from a base config and tabulates the results.

    python -m recipes.sweep --config recipes/configs/demo.yaml \\
        --grid model.codec.name=xcodec,dac --grid model.pattern.name=delay,parallel \\
        --out runs/sweep -- --trainer.max_steps=200

Each grid point runs ``python -m recipes.bagpiper fit`` in its own directory ``<out>/<point>/`` (arguments
after ``--`` go to every run). The final validation metrics of each run (its ``metrics.csv``) are
collected into ``<out>/results.csv``, ``<out>/results.md`` and a bar plot ``<out>/results.png``.
A failed run is recorded with its exit code, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["main", "grid_points", "collect_metrics"]


def grid_points(grids: list[str]) -> list[dict[str, str]]:
    """``["a.b=x,y", "c=z"]`` -> ``[{"a.b": "x", "c": "z"}, {"a.b": "y", "c": "z"}]``."""
    axes = []
    for item in grids:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid must look like key=value1,value2; got {item!r}")
        axes.append([(key, v) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def point_name(point: dict[str, str]) -> str:
    text = "__".join(f"{k.split('.')[-2] if k.count('.') > 1 else k}={v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", text) or "base"


def collect_metrics(run_dir: Path) -> dict[str, float]:
    """The last logged value of every ``val/*`` metric in the run's ``metrics.csv`` files."""
    found: dict[str, float] = {}
    for path in sorted(run_dir.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key and key.startswith("val/") and value not in ("", None):
                        found[key] = float(value)
    return found


def write_table(rows: list[dict], out: Path) -> None:
    keys = sorted({k for r in rows for k in r if k not in ("run", "status")})
    header = ["run", "status", *keys]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["run"], str(r["status"])] + [
            f"{r[k]:.4g}" if isinstance(r.get(k), float) else "" for k in keys
        ]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "val/loss" if "val/loss" in keys else (keys[0] if keys else None)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3))
    if metric is not None:
        ax.bar([r["run"] for r in rows], [r.get(metric, float("nan")) for r in rows])
        ax.set_ylabel(metric)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m recipes.sweep", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", action="append", required=True, help="base config(s), as for recipes.bagpiper"
    )
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2 (repeat for more axes)")
    parser.add_argument("--out", default="runs/sweep", help="sweep directory")
    args = parser.parse_args(argv)
    for config in args.config:
        if not Path(config).is_file():
            parser.error(f"--config {config!r} does not exist")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for point in grid_points(args.grid) or [{}]:
        name = point_name(point)
        run_dir = out / name
        cmd = [sys.executable, "-m", "recipes.bagpiper", "fit"]
        for config in args.config:
            cmd += ["--config", config]
        cmd += [f"--{k}={v}" for k, v in point.items()]
        cmd += [
            f"--trainer.default_root_dir={run_dir}",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={run_dir}",
            *extra,
        ]
        print(f"[sweep] {name}: {' '.join(cmd[1:])}", flush=True)
        status = subprocess.run(cmd).returncode
        rows.append({"run": name, "status": status, **collect_metrics(run_dir)})
    write_table(rows, out)
    print((out / "results.md").read_text())
    return rows


if __name__ == "__main__":
    main()
