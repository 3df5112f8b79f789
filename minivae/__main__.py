"""The `minivae` command's entry point (also `python -m minivae ...` and bin/minivae).

It imports the program (minivae.cli) inside a guard, so that a broken or incomplete installation
ends in one line on stderr, like any other error, rather than a traceback; MINIVAE_DEBUG=1 shows
the traceback.
"""
import os
import sys


def main(argv=None):
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    try:
        from minivae.cli import main as run
    except Exception as e:
        if os.environ.get("MINIVAE_DEBUG"):
            raise
        if isinstance(e, ModuleNotFoundError) and e.name and not e.name.startswith("minivae"):
            why = (f"the Python package {e.name!r} is missing from {sys.executable}: install "
                   f"minivae's dependencies (`pip install -e .` in the checkout)")
        else:
            why = (f"minivae cannot be imported ({type(e).__name__}: {' '.join(str(e).split())}; "
                   f"set MINIVAE_DEBUG=1 for the traceback)")
        print(f"minivae: error: {why}", file=sys.stderr, flush=True)
        return 1
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
