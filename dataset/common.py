"""The on-disk puzzle dataset format (SPEC §7): metadata, dihedral transforms, writer and reader."""
import csv
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pydantic

from utils.errors import UserError

SET_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
SPLITS = ("train", "test")
MAX_GRID_SIDE = 30
HF_DATASET_URL = "https://huggingface.co/datasets/{repo}/resolve/main/{filename}"


class DatasetError(UserError):
    """Bad input or a malformed dataset: reported as one line, exit code 2, no traceback."""


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


# The 8 symmetries of the square in the reference's order (augment names store the id as `t<k>`):
# identity, rot90, rot180, rot270, flip left-right, flip up-down, transpose, anti-transpose.
def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    if tid == 0:
        return grid
    if tid in (1, 2, 3):
        return np.rot90(grid, k=tid)
    if tid == 4:
        return np.fliplr(grid)
    if tid == 5:
        return np.flipud(grid)
    if tid == 6:
        return grid.T
    if tid == 7:
        return np.fliplr(np.rot90(grid, k=1))
    raise ValueError(f"dihedral transform id {tid} is out of range; use 0..7")


DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7]


def dihedral_transform_batch(grids: np.ndarray, tid: int) -> np.ndarray:
    """`dihedral_transform` applied to the last two axes of a stack of grids."""
    if tid in (1, 2, 3):
        return np.rot90(grids, k=tid, axes=(-2, -1))
    if tid == 4:
        return np.flip(grids, axis=-1)
    if tid == 5:
        return np.flip(grids, axis=-2)
    if tid == 6:
        return np.swapaxes(grids, -2, -1)
    if tid == 7:
        return np.flip(np.rot90(grids, k=1, axes=(-2, -1)), axis=-1)
    return dihedral_transform(grids, tid)  # identity, or the out-of-range error


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])


def write_split(split_dir: Path, metadata: PuzzleDatasetMetadata, sets: Dict[str, Dict[str, np.ndarray]]) -> None:
    """Write `dataset.json` and `<set>__<field>.npy` for every set into `split_dir`."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for set_name, fields in sets.items():
        for field in SET_FIELDS:
            np.save(split_dir / f"{set_name}__{field}.npy", fields[field])
    (split_dir / "dataset.json").write_text(metadata.model_dump_json(indent=2))


def read_metadata(split_dir) -> PuzzleDatasetMetadata:
    path = Path(split_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the dataset first (see `python -m dataset.build_sudoku_dataset --help`)")
    try:
        return PuzzleDatasetMetadata.model_validate_json(path.read_text())
    except pydantic.ValidationError as e:
        raise ValueError(f"{path} is not valid dataset metadata: {e.errors()[0]['loc']} {e.errors()[0]['msg']}") from None


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


def read_set(split_dir, set_name: str, mmap: bool = True) -> Dict[str, np.ndarray]:
    """Load one set; inputs and labels memory-mapped (they are the large arrays)."""
    split_dir = Path(split_dir)
    return {field: np.load(split_dir / f"{set_name}__{field}.npy",
                           mmap_mode="r" if (mmap and field in ("inputs", "labels")) else None)
            for field in SET_FIELDS}


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
            raise DatasetError(problem.replace(str(self.output_dir), str(self.given)))

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


SOURCE_CSV_COLUMNS = ["source", "question", "answer", "rating"]


def iter_source_csv(path: Path):
    """(line number, question, answer, rating) of a published source CSV; the header row is optional."""
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if line == 1 and row == SOURCE_CSV_COLUMNS:
                continue
            if len(row) != 4:
                raise DatasetError(f"{path} row {line}: expected 4 columns {','.join(SOURCE_CSV_COLUMNS)}, got {len(row)}")
            yield line, row[1], row[2], row[3]


def parse_rating(path: Path, line: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"{path} row {line}: rating {text!r} is not an integer") from None


def locate_split_csvs(source_dir) -> Dict[str, Path]:
    """`train.csv` and `test.csv` of a local copy of a published dataset."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise DatasetError(f"--source-dir {source_dir} is not a directory; point it at the folder holding train.csv and test.csv")
    paths = {split: source_dir / f"{split}.csv" for split in SPLITS}
    for split, path in paths.items():
        if not path.is_file():
            raise DatasetError(f"missing split: {path} not found; --source-dir needs both train.csv and test.csv")
    return paths


def download_split_csvs(repo: str, cache_dir: Optional[Path] = None, timeout: float = 15.0) -> Dict[str, Path]:
    """Fetch `train.csv` and `test.csv` of a Hugging Face dataset repo with plain urllib (cached)."""
    cache_dir = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trm-datasets") / repo
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        path = cache_dir / f"{split}.csv"
        if not path.is_file():
            url = HF_DATASET_URL.format(repo=repo, filename=f"{split}.csv")
            tmp = path.with_suffix(".part")
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
                    shutil.copyfileobj(response, f, length=1 << 20)
            except (urllib.error.URLError, OSError) as e:
                tmp.unlink(missing_ok=True)
                reason = getattr(e, "reason", e)
                raise DatasetError(f"cannot download {url} ({reason}); without network use --source-dir DIR "
                                   f"(a local copy of train.csv/test.csv) or --generate N_TRAIN --generate-test N_TEST") from None
            os.replace(tmp, path)
        paths[split] = path
    return paths



def choose_csv_source(args, default_repo: str, dataset_name: str, fallback_count: int) -> None:
    """Resolve the source order shared by the Sudoku and Maze builders: --source-dir, then an explicit --source-repo
    (fails when offline), then --generate; with no source flag the default repo, or offline the generator with a notice.
    Sets `args.source_dir` or `args.generate`."""
    if args.source_dir is None and args.source_repo is not None:
        args.source_dir = download_split_csvs(args.source_repo)["train"].parent
    elif args.source_dir is None and args.generate is None:
        try:
            args.source_dir = download_split_csvs(default_repo)["train"].parent
        except DatasetError as e:
            args.generate = fallback_count
            print(f"notice: {e}\nnotice: falling back to the built-in generator (--generate {args.generate} "
                  f"--generate-test {args.generate_test or 1000} --size {args.size}); this is NOT {dataset_name}", file=sys.stderr)
