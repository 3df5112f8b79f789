"""Progress bars on stderr, drawn only where stderr is a terminal; report lines on stdout.

A bar that redraws into a log file or a pipe fills it with hundreds of lines, so a bar is shown
only when it was asked for (no --no-progress) *and* stderr is a terminal (tqdm's disable=None).
A long job's report lines (`say`) outlive their reader: when stdout is a pipe whose reader has
gone (`minivae train ... | head -1`), the rest of the lines are dropped and the job goes on.
"""

import os
import sys


def bar(progress=True, **options):
    """A tqdm bar on stderr; silent when progress is False or stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=None if progress else True, dynamic_ncols=True,
                **options)


def note(msg):
    """A line on stderr that does not tear a bar being drawn."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def say(msg):
    """Print a line on stdout; once stdout's reader has gone, drop this and every later line."""
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        silence_stdout()


def silence_stdout():
    """Point stdout at the null device, so that nothing written later (down to the final flush
    at exit) meets the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        sys.stdout = open(os.devnull, "w")
    finally:
        os.close(devnull)
