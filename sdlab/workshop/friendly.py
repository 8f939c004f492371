"""User mistakes answered with one clear message in the notebook, not a page of traceback.

`install()` registers a handler with IPython for the project's errors (bad config, API refusals, a stack that is
not up, a wait that timed out): the cell shows the message, which names the value and the fix, and still fails,
so papermill and "Run all" stop there as they should.
"""

from __future__ import annotations

from typing import Any

from sdlab.errors import SdlabError

HANDLED: tuple[type[BaseException], ...] = (SdlabError, TimeoutError)


def message(err: BaseException) -> str:
    """What the user reads: the error's kind and its message (which says what to change)."""
    return f"{type(err).__name__}: {err}"


def _handler(shell: Any, etype: type[BaseException], value: BaseException, tb: Any, tb_offset: Any = None) -> list[str]:
    # IPython does not show what a custom handler returns; publishing it as the cell's error output keeps the cell
    # failed (ename/evalue for papermill and nbconvert) with one line instead of the stack
    stb = [message(value)]
    shell._showtraceback(etype, value, stb)
    return stb


def install(shell: Any = None) -> bool:
    """Register the handler with the running IPython shell; False outside IPython (plain Python keeps tracebacks)."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc(HANDLED, _handler)
    return True
