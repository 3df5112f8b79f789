#!/usr/bin/env python
"""Side-by-side: minivae vs PyTorch eager, one training step of each seed model, on this machine.

    python benchmarks/compare_torch.py                  # table for both models (about a minute)
    python benchmarks/compare_torch.py --markdown       # the rows for BENCHMARKS.md
    python benchmarks/compare_torch.py --steps 100 --threads 1 --json

A thin wrapper over `minivae bench` (minivae/bench.py does the measuring: interleaved blocks of
steps in one process, medians, the GEMM floor, peak RSS in fresh subprocesses); it only insists
that PyTorch is importable, since a comparison without it is not one.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minivae import bench  # noqa: E402
from minivae.cli import Parser, UsageError  # noqa: E402


def main(argv=None):
    parser = Parser(prog="compare_torch.py", description=__doc__.split("\n\n")[0])
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.no_torch or not bench.torch_available():
        print("compare_torch.py: error: PyTorch is not importable (pip install torch); "
              "`minivae bench` times minivae alone", file=sys.stderr)
        return 1
    return bench.run_cli(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as e:
        print(f"compare_torch.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:          # one line, as the minivae command does
        print(f"compare_torch.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
