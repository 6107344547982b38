"""Where the Sudoku and Maze builders get their puzzles: the published source CSVs (source,question,answer,rating),
from a local copy or downloaded from Hugging Face, else the built-in generators."""
import csv
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Optional

from dataset.format import SPLITS
from utils.errors import UserError

HF_DATASET_URL = "https://huggingface.co/datasets/{repo}/resolve/main/{filename}"
SOURCE_CSV_COLUMNS = ["source", "question", "answer", "rating"]


def iter_source_csv(path: Path):
    """(line number, question, answer, rating) of a published source CSV; the header row is optional."""
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if line == 1 and row == SOURCE_CSV_COLUMNS:
                continue
            if len(row) != 4:
                raise UserError(f"{path} row {line}: expected 4 columns {','.join(SOURCE_CSV_COLUMNS)}, got {len(row)}")
            yield line, row[1], row[2], row[3]


def parse_rating(path: Path, line: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{path} row {line}: rating {text!r} is not an integer") from None


def locate_split_csvs(source_dir) -> Dict[str, Path]:
    """`train.csv` and `test.csv` of a local copy of a published dataset."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise UserError(f"--source-dir {source_dir} is not a directory; point it at the folder holding train.csv and test.csv")
    paths = {split: source_dir / f"{split}.csv" for split in SPLITS}
    for split, path in paths.items():
        if not path.is_file():
            raise UserError(f"missing split: {path} not found; --source-dir needs both train.csv and test.csv")
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
                raise UserError(f"cannot download {url} ({reason}); without network use --source-dir DIR "
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
        except UserError as e:
            args.generate = fallback_count
            print(f"notice: {e}\nnotice: falling back to the built-in generator (--generate {args.generate} "
                  f"--generate-test {args.generate_test or 1000} --size {args.size}); this is NOT {dataset_name}", file=sys.stderr)
