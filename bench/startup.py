"""Benchmark: the CLI's start-up, ``python -m querywatch --help`` against ``python -c pass``.

Every command pays the import of ``querywatch.cli`` before it does anything (``status`` at 3 a.m.,
and the hundreds of ``python -m querywatch ...`` subprocesses of the test suite). Each case is a
fresh interpreter (the venv's), timed round-robin with the reference so that the load on the
machine hits all alike:

- ``reference``: ``python -c pass`` (the interpreter's own start-up, site and the editable finder);
- ``help``: ``python -m querywatch --help``;
- ``status help``: ``python -m querywatch status --help``;
- ``import cli``: ``python -c "import querywatch.cli"`` (the import alone, no help rendered).

Per case: wall (``perf_counter`` around the child) and CPU (user + system of the child, from
``getrusage(RUSAGE_CHILDREN)``), min and median of ``--repeats``; the figures are the minima (the
machine is shared: the least disturbed run) and querywatch's cost beyond the reference.

Two bytecode modes: ``cached`` (bytecode written to a private ``PYTHONPYCACHEPREFIX`` by a warm-up
run, as an installed package has it) and ``source`` (``PYTHONDONTWRITEBYTECODE=1`` and no cache:
querywatch's modules are compiled on every start, as in a sandbox that sets that variable).
``--tree DIR`` times the querywatch package found in DIR instead (``PYTHONPATH``; e.g. an older
commit from ``git archive``), for a before/after in the same conditions.

Target: ``help`` and ``status help`` under 0.6 s wall (min, ``cached``); exit 1 when missed.

Run: .venv/bin/python bench/startup.py [--repeats 15] [--tree DIR]
Writes bench/results/startup.json (or startup-<name of DIR>.json with --tree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.6
CASES = {
    "reference": ["-c", "pass"],
    "help": ["-m", "querywatch", "--help"],
    "status help": ["-m", "querywatch", "status", "--help"],
    "import cli": ["-c", "import querywatch.cli"],
}
TARGETED = ("help", "status help")


def environment(mode: str, cache: Path, tree: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPYCACHEPREFIX", "PYTHONPATH"}}
    env["COLUMNS"] = "100"
    if mode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one child interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=tempfile.gettempdir(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(mode: str, repeats: int, tree: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qw-startup-pyc-") as folder:
        env = environment(mode, Path(folder), tree)
        for args in CASES.values():  # warm-up: the bytecode cache (cached), the OS page cache
            run_once(args, env)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
        for _ in range(repeats):
            for name, args in CASES.items():
                runs[name].append(run_once(args, env))
    figures: dict[str, Any] = {}
    for name, values in runs.items():
        walls, cpus = [w for w, _ in values], [c for _, c in values]
        figures[name] = {
            "wall_min_s": min(walls),
            "wall_median_s": statistics.median(walls),
            "cpu_min_s": min(cpus),
            "cpu_median_s": statistics.median(cpus),
            "runs": [{"wall_s": w, "cpu_s": c} for w, c in values],
        }
    ref = figures["reference"]
    for name in CASES:
        if name != "reference":
            f = figures[name]
            f["beyond_reference_wall_s"] = f["wall_min_s"] - ref["wall_min_s"]
            f["beyond_reference_cpu_s"] = f["cpu_min_s"] - ref["cpu_min_s"]
            f["ratio_to_reference_cpu"] = f["cpu_min_s"] / ref["cpu_min_s"]
    return figures


def print_table(mode: str, figures: dict[str, Any]) -> None:
    print(f"\n{mode} bytecode")
    print(
        f"{'case':<12} {'wall min':>9} {'wall med':>9} {'CPU min':>9} {'CPU med':>9} "
        f"{'+wall':>8} {'+CPU':>8}"
    )
    for name, f in figures.items():
        extra = (
            f"{f['beyond_reference_wall_s'] * 1000:7.0f}ms {f['beyond_reference_cpu_s'] * 1000:6.0f}ms"
            if name != "reference"
            else ""
        )
        print(
            f"{name:<12} {f['wall_min_s'] * 1000:7.0f}ms {f['wall_median_s'] * 1000:7.0f}ms "
            f"{f['cpu_min_s'] * 1000:7.0f}ms {f['cpu_median_s'] * 1000:7.0f}ms {extra}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tree", type=Path, help="time the querywatch package in this folder")
    opts = parser.parse_args()
    tree = opts.tree.resolve() if opts.tree else None
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "tree": str(tree or ROOT),
        "repeats": opts.repeats,
        "target_wall_s": TARGET_S,
        "modes": {},
    }
    for mode in ("cached", "source"):
        results["modes"][mode] = measure(mode, opts.repeats, tree)
        print_table(mode, results["modes"][mode])
    cached = results["modes"]["cached"]
    missed = [n for n in TARGETED if cached[n]["wall_min_s"] >= TARGET_S]
    results["verdict"] = "FAIL" if missed else "PASS"
    print(
        f"\ntarget: {', '.join(TARGETED)} under {TARGET_S} s wall (min, cached): "
        f"{results['verdict']}" + (f" ({', '.join(missed)})" if missed else "")
    )
    name = f"startup-{tree.name}.json" if tree else "startup.json"
    out = ROOT / "bench" / "results" / name
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out.relative_to(ROOT)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
