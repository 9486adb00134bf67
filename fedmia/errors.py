"""The one error class for bad input: configuration, parameters, data files, checkpoints, addresses.

The CLI turns an ``InputError`` into a message and exit code 2. Everything else is an internal error:
exit 1 with its traceback, never disguised as bad input.
"""


class InputError(ValueError):
    """The user's input is wrong; the message names what and what is allowed."""
