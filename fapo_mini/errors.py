"""Bad input from a user: one line, `error: ...`, a non-zero exit, no traceback.

Every command-line entry point runs its `main` through `cli(main)`. Code that
finds a mistake the user can fix (a path that does not exist, a malformed line, a
missing field, a model folder without weights) raises `UserError` with a message
that names the path, the file:line or the field and says what is wrong. Anything
else is a bug and keeps its traceback.

    raise UserError(f"{path}:{lineno}: row has no 'prompt' field")
"""
import sys


class UserError(Exception):
    """A mistake in the user's input; `cli` prints it as one line and exits with status 2."""


def cli(main):
    """Run `main()`; a UserError becomes `error: <message>` on stderr and exit status 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
