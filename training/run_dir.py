"""A run directory belongs to one run: a new run refuses a directory holding another run's checkpoints or
metrics, and a lock file keeps a second live run (a new one or a resume) out while the first is running."""
import contextlib
import os
from typing import Callable, Iterator, List

from models.checkpoint_io import STATE_FILE, WEIGHTS_FILE
from training.tracking import METRICS_FILE
from utils.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the checkpoint check still applies
    fcntl = None

LOCK_FILE = "run.lock"


def run_files(directory: str) -> List[str]:
    """The checkpoints and metrics of a run in `directory`, sorted."""
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory)
                  if name == METRICS_FILE or STATE_FILE.match(name) or WEIGHTS_FILE.match(name))


@contextlib.contextmanager
def run_lock(directory: str) -> Iterator[Callable[[], None]]:
    """Hold an exclusive flock on `<directory>/run.lock` for the life of the run; yields a function that records
    this process's pid in it (for the message a second run gets). The kernel drops the lock when the process
    ends, however it ends (even SIGKILL), so a lock file left behind never blocks a later run."""
    os.makedirs(directory, exist_ok=True)
    if fcntl is None:
        yield lambda: None
        return
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UserError(f"another run (pid {holder}) is using {directory}: wait for it to end or stop it, or "
                            f"give this run another +run_name= or +checkpoint_path=") from None

        def record_pid():
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield record_pid
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def claim_run_dir(directory: str, resuming: bool) -> Iterator[None]:
    """Lock the run directory (rank 0); a new run then refuses it if another run's files are there."""
    with run_lock(directory) as record_pid:
        found = run_files(directory)
        if found and not resuming:
            resumable = any(STATE_FILE.match(name) for name in found)
            fix = f"continue it with resume={directory}" if resumable else "it has no checkpoint to resume: delete it"
            raise UserError(f"checkpoint_path {directory} already holds a run ({', '.join(found[:3])}): {fix}, or "
                            f"give this run another +run_name= or +checkpoint_path=")
        record_pid()
        yield
