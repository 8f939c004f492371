"""The project's error tree: every message names the bad value and how to fix it."""

from __future__ import annotations


class SdlabError(Exception):
    """Base class of every error sdlab raises on purpose."""


class ConfigError(SdlabError):
    """The configuration file or environment is invalid; the message lists every problem."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class ValidationError(SdlabError):
    """A request is invalid. `field` is the dotted path of the bad field."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        self.field = field
        self.status = status
        super().__init__(f"{field}: {message}")


class ModelError(SdlabError):
    """A model cannot be built, found or loaded."""


class RuntimeServerError(SdlabError):
    """The SD runtime failed or answered something the agent cannot use."""


class ProvisionError(SdlabError):
    """Creating or deleting a cloud resource failed."""


class StackError(SdlabError):
    """The local stack cannot start, or is not running when it should be."""
