#!/usr/bin/env python
"""Two runs of the same settings (a training step replayed from a CUDA graph, and run eagerly)
compared by gpu_check.sh: every number of metrics.csv, seconds aside, to a relative 1e-4 (the
same kernels on the same inputs, so equal but for what the device does in another order).

    python benchmarks/gpu_check_compare.py RUN_WITH_GRAPH RUN_EAGER      # exit 0 when they agree
"""

import csv
import math
import sys
from pathlib import Path

TOLERANCE = 1e-4


def rows(run):
    with open(Path(run) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def main(argv=None):
    graph, eager = (argv if argv is not None else sys.argv[1:])[:2]
    a, b = rows(graph), rows(eager)
    bad = [] if len(a) == len(b) else [f"{len(a)} epochs against {len(b)}"]
    for ra, rb in zip(a, b):
        for key in ra:
            if key == "seconds":
                continue
            x, y = float(ra[key]), float(rb[key])
            ok = math.isclose(x, y, rel_tol=TOLERANCE, abs_tol=1e-9)
            print(f"epoch {ra['epoch']} {key:<14} graph {x:<22.12g} eager {y:<22.12g}"
                  f"{'' if ok else '  DIFFERENT'}")
            if not ok:
                bad.append(key)
    print("seconds per epoch: graph", [r["seconds"] for r in a], "eager", [r["seconds"] for r in b])
    if bad:
        print("gpu_check_compare.py: the runs differ:", ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
