"""One exception type for every problem a user can fix.

Each message names the file, the tensor or the recipe field, and says what to do: the CLI prints it on one line and
exits with status 2, without a traceback.
"""


class TaskvecError(Exception):
    """A problem with the user's inputs, recipe or options (never a bug in taskvec)."""
