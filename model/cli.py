"""How every command-line entry point ends: a user error is one clear message and a non-zero exit code,
never a traceback (``--debug`` shows it).

Bad data, bad settings, bad files and missing folders raise ValueError (DatasetError, BundleError,
TaskFileError, ...) or OSError in the code, a diverged run FloatingPointError (its message says which
setting to lower); all are the user's to fix and exit with 2. Anything else is a
bug of ours, reported in one line (exit 3) with the hint to rerun with --debug.
"""
from __future__ import annotations

import sys


def guarded(main, argv=None) -> int:
    """``main(argv)``, with errors turned into messages as described above."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (the point of this function)
        if debug:
            raise
        if isinstance(e, (ValueError, OSError, FloatingPointError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"error: unexpected {type(e).__name__}: {e}\n(a bug: rerun with --debug to see where, and report it)",
              file=sys.stderr)
        return 3
