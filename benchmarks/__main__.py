"""``python -m benchmarks [SUITE ...] [--quick] [--json FILE]``: a table to stdout, JSON to a file.

Each suite is a module ``benchmarks/<suite>.py`` with ``run(quick: bool) -> list[dict]``;
rows carry ``case``, ``impl``, ``ms`` and ``ratio`` (to the baseline of the same run).
"""

from __future__ import annotations

import argparse
import importlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep on a shared CPU
import json
import pkgutil
import platform
import sys
from pathlib import Path

import torch

import benchmarks


def suites() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                  if m.name not in {"common"} and not m.name.startswith("_"))


def print_table(rows: list[dict]) -> None:
    cols = ["suite", "case", "impl", "ms", "ratio"]
    extra = sorted({k for r in rows for k in r} - set(cols))
    cols += extra
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(width[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("suites", nargs="*", help=f"any of {suites()} (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    p.add_argument("--json", default="benchmarks/results/latest.json", help="where to write rows")
    a = p.parse_args(argv)
    names = a.suites or suites()
    unknown = set(names) - set(suites())
    if unknown:
        print(f"unknown suite(s) {sorted(unknown)}; choose from {suites()}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        rows += importlib.import_module(f"benchmarks.{name}").run(quick=a.quick)
    print_table(rows)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
