"""User-facing errors: one clear line, no traceback."""


class UserError(Exception):
    """A mistake the user can fix (config, data, paths). The CLI prints the message and exits 2."""
