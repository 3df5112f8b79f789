"""Progress bars on stderr, drawn only where stderr is a terminal.

A bar that redraws into a log file or a pipe fills it with hundreds of lines, so a bar is shown
only when it was asked for (no --no-progress) *and* stderr is a terminal (tqdm's disable=None).
"""

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
