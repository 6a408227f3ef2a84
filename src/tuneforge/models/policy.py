"""Loading safety as a value: what the user allowed, passed as an argument from the CLI to every loader.
Kept free of heavy imports, so the CLI can build it before deciding what to load."""

from __future__ import annotations

from dataclasses import dataclass

# The environment variables the CLI (only) reads for the two switches, for users who set them once.
ALLOW_PICKLE_ENV = "TUNEFORGE_ALLOW_PICKLE"
TRUST_REMOTE_CODE_ENV = "TUNEFORGE_TRUST_REMOTE_CODE"


@dataclass(frozen=True)
class LoadPolicy:
    """Loading safety, chosen by the user (the CLI's --allow-pickle / --trust-remote-code) and passed
    down as an argument: pickle weights (.bin/.pt) run code when unpickled, and trust_remote_code runs
    a model repo's Python. The default refuses both."""

    allow_pickle: bool = False
    trust_remote_code: bool = False

    def cli_flags(self) -> list[str]:
        """The same switches as flags, for a child `tuneforge` process (compare-methods, the UI's launch)."""
        return [*(["--allow-pickle"] if self.allow_pickle else []),
                *(["--trust-remote-code"] if self.trust_remote_code else [])]


SAFE = LoadPolicy()
