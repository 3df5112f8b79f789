"""How many threads the BLAS library (and any other pool NumPy or PyTorch brought) may use.

OpenBLAS's threads spin while they wait for work. Alone on the machine, two threads on two cores
make a conv epoch 1.3x faster than one; beside one busy process they fight it for the cores and the
epoch takes 2.5x as long as with one thread (`minivae train --model conv --limit 3200`, 2 cores:
0.86 s and 1.13 s an epoch alone with 2 and 1 threads; 3.19 s and 1.28 s beside
`python -c 'while True: pass'`). So the default, "auto", takes the cores this process may run on
less the processes running on the machine right now (the kernel's count in /proc/loadavg, the
fewest of five looks 10 ms apart; else the one-minute load average), and at least one.
`--threads N` sets it; so do the thread-count variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
MKL_NUM_THREADS) when set.

OpenBLAS's results depend on its thread count at float rounding, so `minivae train` resolves the
count once when a run starts and saves it with the run's settings: --resume uses it again and
continues bit for bit; two fresh runs are identical when they have the same count.
"""

import os
import time


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _own_running():
    """This process's threads that are running now (its BLAS threads spin right after start)."""
    running = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                running += f.read().rsplit(") ", 1)[1].startswith("R")
        except (OSError, IndexError):
            continue
    return running


def others_running(samples=5, interval=0.01):
    """Threads of other processes running on the machine now: the fewest of a few looks at the
    kernel's count 10 ms apart, less this process's own (a process that runs for a moment is
    not a busy one)."""
    try:
        counts = []
        for k in range(samples):
            if k:
                time.sleep(interval)
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - _own_running())
        return max(0, min(counts))
    except (OSError, ValueError, IndexError):
        try:
            return round(os.getloadavg()[0])
        except OSError:
            return 0


ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def from_environment():
    """The thread count the environment sets (the first of ENV that holds a number), or None."""
    for name in ENV:
        try:
            return name, int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return None


def choose(requested=None):
    """(threads, why): `requested` when given, else what the environment sets, else cores
    less the busy ones, at least 1."""
    cores = usable_cores()
    if requested is not None:
        if requested > cores:
            _warn_once(f"minivae: warning: --threads {requested} is more than the {cores} "
                       f"core{'s' * (cores != 1)} this process may use: the BLAS threads then "
                       f"take turns on the cores and every product gets much slower; "
                       f"--threads {cores} or fewer is faster")
        return requested, f"--threads {requested}"
    env = from_environment()
    if env is not None:
        return env[1], f"{env[0]}={env[1]}"
    busy = others_running()
    n = max(1, cores - busy)
    return n, f"auto: {cores} core{'s' * (cores != 1)}, {busy} other process" \
              f"{'es' * (busy != 1)} running"


_LIMITS = []          # kept alive: the limits last as long as the process
_WARNED = set()


def _warn_once(message):
    """The message on stderr, the first time this process says it."""
    if message not in _WARNED:
        _WARNED.add(message)
        import sys
        print(message, file=sys.stderr, flush=True)


def apply(requested=None):
    """Limit every thread pool of the process to choose(requested)'s count; returns
    (threads, why). Without threadpoolctl, nothing is limited and why says so."""
    n, why = choose(requested)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return n, why + " (not applied: threadpoolctl is not installed)"
    _LIMITS.append(threadpool_limits(limits=n))
    return n, why
