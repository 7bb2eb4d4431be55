"""The errors a user fixes (a bad setting, a missing file, data prepared by another run): each
command prints one as its message and exits 2, without a traceback. Anything else is a bug or a
crash, and keeps its traceback. Its own module, at the bottom, so the command line catches them
all without importing the torch, Lightning and MLflow code that raises them."""


class UserError(Exception):
    """Something the user can fix; the message says what and how."""
