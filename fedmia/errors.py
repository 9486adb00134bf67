"""The error classes for bad input: configuration, parameters, data files, checkpoints, addresses, and
settings under which training diverges.

The CLI turns an ``InputError`` into a message and exit code 2. Everything else is an internal error:
exit 1 with its traceback, never disguised as bad input.
"""

from __future__ import annotations


class InputError(ValueError):
    """The user's input is wrong; the message names what and what is allowed."""


class TrainingDivergedError(InputError):
    """Training produced a non-finite loss or non-finite weights.

    An input error (exit 2), not an internal one: the cause is the user's settings (a learning rate too
    large for the model and data, momentum, unscaled features, a DP noise or clipping setting), it repeats
    with the same config and seed, and the fix is a setting. Reporting the run instead would show every
    attack tied at AUC 0.5 on a NaN model: a broken run read as a private one. Every message starts with
    ``MARK``, so that a federation's server can recognise it in a client's error reply (Flower passes the
    exception's text only) and fail the run with it instead of dropping the client.
    """

    MARK = "training diverged:"

    def __init__(self, message: str) -> None:
        super().__init__(message if message.startswith(self.MARK) else f"{self.MARK} {message}")

    def within(self, where: str) -> TrainingDivergedError:
        """The same error with where it happened (a setting, a client and round) after the mark.

        The message is read from the last mark on: a Ray task's error is an instance of its cause's class
        whose text is the task's traceback, ending with the message."""
        text = str(self)
        start = text.rfind(self.MARK)
        rest = text[start + len(self.MARK) :].strip() if start >= 0 else text
        return TrainingDivergedError(f"{self.MARK} {where}: {rest}")

    @classmethod
    def from_text(cls, text: str, where: str = "") -> TrainingDivergedError | None:
        """The error whose message ``text`` carries (e.g. a Flower error reply's reason), or None.

        The last mark: on Ray the reason holds the actor's traceback (quoting the message) before the
        message itself."""
        start = text.rfind(cls.MARK)
        if start < 0:
            return None
        message = text[start:].rstrip("'>\n ")  # Flower wraps it as "<class ...>:<'...'>"
        err = cls(message)
        return err.within(where) if where else err
