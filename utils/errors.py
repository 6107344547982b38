"""The one kind of error a user can fix (a bad value, file, device or disk) and the command-line wrapper that
reports it as a single line `error: <problem>: <fix>` on stderr with exit code 2, no traceback."""
import errno
import functools
import os
import sys
from typing import Any, Callable, Optional, Tuple

import pydantic

EXIT_USER_ERROR = 2
# Environment problems, not bugs: the wrapper reports these in one line wherever they occur in the chain.
FULL, READ_ONLY = "free space or choose another directory", "choose a writable directory"
DISK_ERRNOS = {errno.ENOSPC: ("no space left on the device", FULL), errno.EDQUOT: ("disk quota exceeded", FULL),
               errno.EROFS: ("the file system is read-only", READ_ONLY), errno.EACCES: ("permission denied", READ_ONLY)}


class UserError(ValueError):
    """Bad input from the user (a value, file, device or disk the code cannot take); the message names the problem
    and the fix, in one line. Code that validates what the user gave raises it; only the command-line wrapper
    catches it (callers may catch it to add where the value came from)."""


class MissingFile(UserError, FileNotFoundError):
    """A path the user gave that names no file (a FileNotFoundError too, for code that asks for one)."""


def validation_problem(err: pydantic.ValidationError) -> Tuple[str, str, str, Any]:
    """pydantic's report reduced to its first problem: (type, dotted key, message, value given). An unknown key
    comes first: a misspelt key explains the other errors (it is also "missing")."""
    first = min(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    key = ".".join(str(p) for p in first["loc"])
    return first["type"], key, first["msg"].removeprefix("Value error, "), first.get("input")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def disk_problem(exc: BaseException) -> Optional[str]:
    """The message for a full, read-only or forbidden disk anywhere in `exc`'s chain (torch wraps the OSError
    of a failed write in a RuntimeError), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            problem, fix = DISK_ERRNOS[exc.errno]
            return f"{problem}{f' writing {exc.filename!r}' if exc.filename else ''}: {fix}"
        # C++ writers (torch.save) may keep only the system's wording of the error
        worded = [code for code in DISK_ERRNOS if os.strerror(code) in str(exc)]
        if worded:
            return "{}: {}".format(*DISK_ERRNOS[worded[0]])
        exc = exc.__cause__ or exc.__context__
    return None


def is_main_process() -> bool:
    """Rank 0 under torchrun (RANK is set before the process starts), or a plain process."""
    return os.environ.get("RANK", "0") == "0"


def close_progress_bars() -> None:
    """A bar left open redraws itself at exit, after (or glued to) the error line: close it first."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", [])):
        bar.close()


def exit_with(message: str) -> None:
    close_progress_bars()
    if is_main_process():  # one line per job, not one per rank
        print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def user_errors(main: Callable) -> Callable:
    """Wrap a command-line entry point: UserError, and disk problems, become one line and exit code 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            exit_with(str(e))
        except Exception as e:
            message = disk_problem(e)
            if message is None:
                raise
            exit_with(message)
    return wrapper
