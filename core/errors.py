"""The one exception type a step raises for a failure its user can act on."""


class StepError(RuntimeError):
    """A pipeline step failed for a reason the user can fix; the message says what and how.

    The CLI prints the message and exits non-zero; kfp marks the task failed with it.
    """
