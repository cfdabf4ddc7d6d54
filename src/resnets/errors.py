"""The one exception type for mistakes a user can fix (bad flag, bad file, bad data).

The CLI prints its message as one paragraph and exits with status 2, without a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message names the file or flag and what was expected."""
