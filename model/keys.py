"""Keys of what users write (task files, reader options, recipe keys): an unknown key is an error that
names it and, when one is close, the key that was probably meant."""
from __future__ import annotations

import difflib


def did_you_mean(key: str, valid) -> str:
    """"; did you mean 'x'?" for the closest valid key, or "" when none is close."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_key_message(key: str, valid) -> str:
    return f"unknown key {key!r}{did_you_mean(key, valid)} Valid keys: {', '.join(valid)}"
