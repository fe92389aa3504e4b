"""``python -m examples`` lists the examples; ``python -m examples NAME [options]`` runs one."""

from __future__ import annotations

import argparse
import os
import sys
import time

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a small
# machine shared with other jobs, spinning threads made the examples 2-3x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import EXAMPLES, load


def _usage_error(msg: str) -> int:
    print(f"python -m examples: error: {msg}", file=sys.stderr)
    return 2


def _nonnegative(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def parser(name: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m examples {name or 'NAME'}",
                                description=EXAMPLES.get(name, "run one example"))
    p.add_argument("--steps", type=_nonnegative, default=None,
                   help="training steps (default: the example's own, about a minute on a CPU)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seed", type=int, default=0, help="the key everything is drawn from")
    p.add_argument("--out", default=None, help="folder for the plots (default: out/NAME)")
    p.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                   help="run the train step eagerly instead of through fnnet.jit")
    p.add_argument("--compile", dest="compile", action="store_true",
                   help="compile the train step with fnnet.jit even where the example does not by default")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def list_examples() -> None:
    print("python -m examples NAME [--steps N] [--device cpu|cuda] [--seed S] [--out DIR] [--no-compile]\n")
    width = max(map(len, EXAMPLES))
    for name, what in EXAMPLES.items():
        print(f"  {name:<{width}}  {what}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-l", "--list", "list"):
        list_examples()
        return 0
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        list_examples()
        return 0
    name = argv[0]
    if name not in EXAMPLES:
        return _usage_error(f"unknown example {name!r} (run `python -m examples` for the list)")
    module = load(name)
    p = parser(name)
    if hasattr(module, "add_arguments"):
        module.add_arguments(p)
    p.error = lambda msg: sys.exit(_usage_error(msg))  # one line, exit 2, no usage dump
    try:
        args = vars(p.parse_args(argv[1:]))
    except SystemExit as e:      # --help (0) or a bad option (2, already printed)
        return int(e.code or 0)

    from .common import ExampleError

    start = time.perf_counter()
    try:
        module.run(**args)
    except ExampleError as e:
        return _usage_error(str(e))
    except KeyboardInterrupt:
        return _usage_error("interrupted")
    print(f"  time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
