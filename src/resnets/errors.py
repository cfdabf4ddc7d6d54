"""The one exception type for mistakes a user can fix (bad flag, bad file, bad data).

The CLI prints its message as one paragraph and exits with status 2, without a traceback;
anything else is a bug and keeps its traceback.
"""
import os
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: the message names the file or flag and what was expected."""


def writable_path(path, flag: str, expected: str):
    """`path` as a Path, or a UserError naming `flag` unless a file can be written there.

    Checked before the work (an evaluation may take hours) so that a typo fails at once.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder: expected {expected}.")
    if not folder.is_dir():
        raise UserError(f"{flag} {str(path)!r}: the folder {str(folder)!r} does not exist; create it first or "
                        f"give {expected} in an existing folder.")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{flag} {str(path)!r} cannot be written (permission denied): expected {expected} "
                        "in a folder you can write to.")
    return path
