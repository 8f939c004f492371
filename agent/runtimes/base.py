"""The adapter interface every runtime module implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sdlab.contracts import TaskMessage
from sdlab.errors import RuntimeServerError


class RuntimeFailure(RuntimeServerError):
    """The runtime could not produce the task's images.

    `retryable` failures (connection refused, 5xx, timeouts, unreadable answers) release the message for
    another try; the others (the runtime rejected the request) end the task `failed` at once.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        self.retryable = retryable
        super().__init__(message)


@dataclass
class RuntimeResult:
    images: list[bytes]
    info: dict[str, Any] = field(default_factory=dict)


class RuntimeAdapter(Protocol):
    def ready(self) -> bool:
        """True once the runtime answers and has a model loaded."""

    def run(self, task: TaskMessage) -> RuntimeResult:
        """Generate the task's images; raise RuntimeFailure."""

    def interrupt(self) -> None:
        """Ask the runtime to stop the current generation."""
