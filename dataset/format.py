"""The on-disk puzzle dataset format (docs/dataset_format.md): metadata, the split's array files, their writers (whole arrays or
streamed rows) and the output-directory guard every builder writes through."""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydantic

from utils.errors import MissingFile, UserError, validation_problem

SET_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
SPLITS = ("train", "test")
MAX_GRID_SIDE = 30
# The loader gives this label to the cells the dataset marks ignored (its ignore_label_id) and to padding rows;
# the losses and metrics skip it.
IGNORE_LABEL_ID = -100
NPY_HEADER_BYTES = 128  # fixed, so the row count can be written after streaming the rows


class PuzzleDatasetMetadata(pydantic.BaseModel):
    pad_id: int
    ignore_label_id: Optional[int]
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: List[str]


def set_array_path(split_dir, set_name: str, field: str) -> Path:
    """Where one field of one set lives in a split: `<split>/<set>__<field>.npy`."""
    return Path(split_dir) / f"{set_name}__{field}.npy"


def write_metadata(split_dir, metadata: PuzzleDatasetMetadata) -> None:
    (Path(split_dir) / "dataset.json").write_text(metadata.model_dump_json(indent=2))


def write_split(split_dir: Path, metadata: PuzzleDatasetMetadata, sets: Dict[str, Dict[str, np.ndarray]]) -> None:
    """Write `dataset.json` and `<set>__<field>.npy` for every set into `split_dir`."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for set_name, fields in sets.items():
        for field in SET_FIELDS:
            np.save(set_array_path(split_dir, set_name, field), fields[field])
    write_metadata(split_dir, metadata)


def read_metadata(split_dir) -> PuzzleDatasetMetadata:
    path = Path(split_dir) / "dataset.json"
    if not path.is_file():
        raise MissingFile(f"{path} not found: build the dataset first (see `python -m dataset.build_sudoku_dataset --help`)")
    try:
        return PuzzleDatasetMetadata.model_validate_json(path.read_text())
    except pydantic.ValidationError as e:
        _, key, msg, _ = validation_problem(e)
        raise UserError(f"{path} is not valid dataset metadata: {key or 'the file'}: {msg}") from None


def reserved_memmap(path: Path, shape, dtype=np.uint8) -> np.memmap:
    """A .npy file to fill in place, its disk blocks allocated up front: a full disk then fails here with ENOSPC
    instead of killing the process with SIGBUS on the first write to an unbacked page."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):  # POSIX but not macOS
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:  # it names no file
                raise OSError(e.errno, e.strerror, str(path)) from None
    return array


def single_example_layout(num_groups: int, puzzles_per_group: int) -> Dict[str, np.ndarray]:
    """Indices of the Sudoku/Maze layout: one group per original puzzle, each augment its own
    puzzle with one example, all under the blank identifier 0."""
    num_puzzles = num_groups * puzzles_per_group
    return {"puzzle_identifiers": np.zeros(num_puzzles, dtype=np.int32),
            "puzzle_indices": np.arange(num_puzzles + 1, dtype=np.int32),
            "group_indices": np.arange(0, num_puzzles + 1, puzzles_per_group, dtype=np.int32)}


def single_set_metadata(seq_len: int, vocab_size: int, num_groups: int, puzzles_per_group: int) -> PuzzleDatasetMetadata:
    return PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
                                 seq_len=seq_len, num_puzzle_identifiers=1, total_groups=num_groups,
                                 mean_puzzle_examples=1.0, total_puzzles=num_groups * puzzles_per_group, sets=["all"])


def write_identifiers(output_dir: Path, names: Sequence[str] = ("<blank>",)) -> None:
    (Path(output_dir) / "identifiers.json").write_text(json.dumps(list(names)))


# ---------------------------------------------------------------- streamed writers (for splits larger than memory)

class NpyRowWriter:
    """Append uint8 rows to an .npy file; the header (with the final row count) is written on close."""

    def __init__(self, path: Path, row_len: int):
        self.path, self.row_len, self.rows = path, row_len, 0
        self.file = open(path, "wb")
        self.file.write(b"\0" * NPY_HEADER_BYTES)

    def append(self, rows: np.ndarray):
        self.file.write(np.ascontiguousarray(rows, dtype=np.uint8).data)  # no copy when already contiguous
        self.rows += len(rows)

    def close(self):
        header = repr({"descr": "|u1", "fortran_order": False, "shape": (self.rows, self.row_len)}).encode("latin1")
        pad = NPY_HEADER_BYTES - 10 - len(header) - 1
        assert pad >= 0, "npy header does not fit its reserved space"
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + (NPY_HEADER_BYTES - 10).to_bytes(2, "little") + header + b" " * pad + b"\n")
        self.file.close()


class SplitWriter:
    """One split holding one set: streams inputs/labels, keeps the small index arrays in memory."""

    def __init__(self, split_dir: Path, seq_len: int, set_name: str = "all"):
        split_dir.mkdir(parents=True, exist_ok=True)
        self.split_dir, self.set_name, self.seq_len = split_dir, set_name, seq_len
        self.inputs = NpyRowWriter(set_array_path(split_dir, set_name, "inputs"), seq_len)
        self.labels = NpyRowWriter(set_array_path(split_dir, set_name, "labels"), seq_len)
        self.puzzle_identifiers: List[np.ndarray] = []
        self.puzzle_sizes: List[np.ndarray] = []
        self.group_sizes: List[int] = []

    def add_group(self, inputs: np.ndarray, labels: np.ndarray, identifiers: np.ndarray, examples_per_puzzle: int):
        self.inputs.append(inputs)
        self.labels.append(labels)
        self.puzzle_identifiers.append(identifiers)
        self.puzzle_sizes.append(np.full(len(identifiers), examples_per_puzzle))
        self.group_sizes.append(len(identifiers))

    def close(self, num_identifiers: int, pad_id: int, ignore_label_id: Optional[int],
              vocab_size: int) -> Tuple[PuzzleDatasetMetadata, int]:
        """Write the index arrays and dataset.json; returns the metadata and the number of examples."""
        self.inputs.close()
        self.labels.close()
        sizes = np.concatenate(self.puzzle_sizes) if self.puzzle_sizes else np.zeros(0, dtype=np.int64)
        fields = {
            "puzzle_identifiers": np.concatenate(self.puzzle_identifiers).astype(np.int32) if self.puzzle_identifiers else np.zeros(0, np.int32),
            "puzzle_indices": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32),
            "group_indices": np.concatenate([[0], np.cumsum(self.group_sizes)]).astype(np.int32),
        }
        for field, value in fields.items():
            np.save(set_array_path(self.split_dir, self.set_name, field), value)
        total_puzzles = len(sizes)
        metadata = PuzzleDatasetMetadata(
            pad_id=pad_id, ignore_label_id=ignore_label_id, blank_identifier_id=0, vocab_size=vocab_size,
            seq_len=self.seq_len, num_puzzle_identifiers=num_identifiers, total_groups=len(self.group_sizes),
            mean_puzzle_examples=float(sizes.sum() / max(total_puzzles, 1)), total_puzzles=total_puzzles,
            sets=[self.set_name])
        write_metadata(self.split_dir, metadata)
        return metadata, int(sizes.sum())


# ---------------------------------------------------------------- the output directory

def is_dataset_dir(path: Path) -> bool:
    """A directory a builder wrote: one of its splits has valid metadata."""
    for split in SPLITS:
        try:
            read_metadata(Path(path) / split)
            return True
        except (FileNotFoundError, ValueError):
            continue
    return False


def output_dir_problem(path: Path, force: bool, recognise: Callable[[Path], bool] = is_dataset_dir,
                       what: str = "dataset") -> Optional[str]:
    """Why `path` may not receive a new build, or None: only an absent or empty directory, or (with --force) a
    previous build recognised by `recognise`, may be written; anything else stays untouched."""
    if not path.exists():
        existing = next(p for p in path.absolute().parents if p.exists())
        # read-only or forbidden: say so now, not after the build (root passes permission checks, not EROFS)
        return None if os.access(existing, os.W_OK) else f"--output-dir {path}: {existing} is not writable: choose a writable directory"
    if not path.is_dir():
        return f"--output-dir {path} is an existing file: give the path of a new directory"
    if not any(path.iterdir()):
        return None
    if recognise(path):
        return None if force else (f"--output-dir {path} already holds a {what}: pass --force to replace it, "
                                   f"or choose another --output-dir")
    found = ", ".join(sorted(p.name for p in path.iterdir())[:3])
    return (f"--output-dir {path} is not empty and holds no {what} (it contains {found}, ...): choose a new or empty "
            f"directory; nothing was written")


def check_output_dir(path, force: bool = False) -> None:
    """Stop at once, before any work, when the build could not be moved into `path` (after tidying up what killed
    builds left beside it)."""
    AtomicOutputDir(path, force).prepare()


def add_output_args(parser, **output_dir_kwargs) -> None:
    parser.add_argument("--output-dir", **output_dir_kwargs)
    parser.add_argument("--force", action="store_true", help="replace the dataset a previous build left in --output-dir")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class AtomicOutputDir:
    """Build into a temporary sibling directory `.NAME.tmp-<pid>-*` and move it into place only on success, so an
    existing dataset is never left half-written; the output directory is checked (prepare: by check_output_dir
    before any work, and on entry) and again before the move (see output_dir_problem). prepare also removes the
    temporaries of killed builds (their pid is gone) and puts back a previous dataset that a build killed mid-swap
    had set aside (`.NAME.old-<pid>`)."""

    def __init__(self, output_dir, force: bool = False):
        self.given = Path(output_dir)
        self.output_dir = self.given.resolve()
        self.force = force

    def _check(self) -> None:
        problem = output_dir_problem(self.output_dir, self.force)
        if problem:
            raise UserError(problem.replace(str(self.output_dir), str(self.given)))

    def _siblings(self, kind: str):
        """(path, pid) of `.NAME.<kind>-<pid>...` entries beside the output directory."""
        prefix = f".{self.output_dir.name}.{kind}-"
        for entry in self.output_dir.parent.iterdir():
            pid = entry.name[len(prefix):].split("-")[0]
            if entry.name.startswith(prefix) and pid.isdigit():
                yield entry, int(pid)

    def prepare(self) -> None:
        if self.output_dir.parent.is_dir():
            self.remove_stale()
        self._check()

    def remove_stale(self) -> None:
        for old, pid in self._siblings("old"):
            if pid != os.getpid() and not _pid_alive(pid):
                if self.output_dir.exists():
                    shutil.rmtree(old, ignore_errors=True)
                else:  # killed between the two renames: the previous dataset goes back
                    os.replace(old, self.output_dir)
        for tmp, pid in self._siblings("tmp"):
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)

    def __enter__(self) -> Path:
        self.prepare()
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.tmp-{os.getpid()}-", dir=self.output_dir.parent))
        # mkdtemp makes the directory owner-only; a finished dataset gets the usual umask permissions.
        umask = os.umask(0)
        os.umask(umask)
        self.tmp.chmod(0o777 & ~umask)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._check()  # the directory may have changed during a long build
                self._move_into_place()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def _move_into_place(self) -> None:
        if self.output_dir.exists():  # an empty directory, or a previous dataset with --force
            old = self.output_dir.with_name(f".{self.output_dir.name}.old-{os.getpid()}")
            os.replace(self.output_dir, old)
            os.replace(self.tmp, self.output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.output_dir)
