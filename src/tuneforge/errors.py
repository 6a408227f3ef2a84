"""User-facing errors: one clear line, no traceback."""


class UserError(Exception):
    """A mistake the user can fix (config, data, paths). The CLI prints the message and exits 2.

    The message is always one line: line breaks that come from user input (a key, a role, a file
    name) are shown escaped, so `error: ...` stays a single line on stderr."""

    def __str__(self) -> str:
        text = super().__str__()
        if "\n" in text or "\r" in text:
            text = text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")
        return text
