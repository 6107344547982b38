"""Nothing lost: builders write only into an absent or empty directory or (with --force) over a dataset they built,
clean up their own temporaries (also a killed build's), a run directory belongs to one run, and a full disk is
one line. Every other file is checked byte for byte afterwards."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataset import build_sudoku_dataset
from dataset.format import set_array_path
from tests.helpers import QUIET_ENV, ROOT, TINY_ARCH, build_sudoku4, pretrain_command
from training.run_dir import run_lock
from utils.errors import UserError

QUIET = dict(QUIET_ENV, PYTHONPATH=str(ROOT))  # -m from any working directory


def snapshot(directory: Path) -> dict:
    """Every entry under `directory` (hidden ones too) with the bytes of its files."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None) for p in sorted(directory.rglob("*"))}


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def last_line_error(result) -> str:
    """A failure after some work: progress lines, then the one error line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


def sudoku_builder(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "dataset.build_sudoku_dataset", "--size", "4", "--generate", "20",
                           "--generate-test", "5", "--workers", "1", *map(str, args)], cwd=cwd, env=QUIET,
                          capture_output=True, text=True, timeout=300)


def pretrain(args, cwd):
    return subprocess.run(pretrain_command(args), cwd=cwd, env=QUIET,
                          capture_output=True, text=True, timeout=600)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def data_dir(tmp_path):
    """data/ with one dataset and a user's file beside it."""
    data = tmp_path / "data"
    build_sudoku4(data / "a", n_train=10, n_test=4, num_aug=1)
    (data / "notes.txt").write_text("my notes")
    return data


def test_a_builder_never_wipes_or_displaces_what_it_did_not_build(data_dir):
    before = snapshot(data_dir)
    assert "is not empty and holds no dataset" in one_line_error(sudoku_builder("--output-dir", data_dir))
    assert "is an existing file" in one_line_error(sudoku_builder("--output-dir", data_dir / "notes.txt"))
    assert "already holds a dataset: pass --force" in one_line_error(sudoku_builder("--output-dir", data_dir / "a"))
    assert "is not empty" in one_line_error(sudoku_builder("--output-dir", ".", cwd=data_dir))
    assert snapshot(data_dir) == before  # no rename, no hidden copy, no temporary left


def test_force_replaces_only_the_previous_dataset(data_dir):
    notes = (data_dir / "notes.txt").read_bytes()
    inputs = set_array_path(data_dir / "a" / "train", "all", "inputs")
    old_inputs = inputs.read_bytes()
    result = sudoku_builder("--output-dir", data_dir / "a", "--force", "--seed", "7")
    assert result.returncode == 0, result.stderr[-2000:]
    assert inputs.read_bytes() != old_inputs
    assert (data_dir / "notes.txt").read_bytes() == notes
    assert sorted(p.name for p in data_dir.iterdir()) == ["a", "notes.txt"]


def test_a_killed_build_is_cleaned_up_and_a_dataset_set_aside_mid_swap_comes_back(data_dir):
    pid = dead_pid()
    leftover = data_dir / f".b.tmp-{pid}-x1y2"  # a build killed while writing b
    leftover.mkdir()
    (leftover / "half.npy").write_bytes(b"\0" * 100)
    before = snapshot(data_dir / "a")
    os.replace(data_dir / "a", data_dir / f".a.old-{pid}")  # a build killed between its two renames
    build_sudoku_dataset.main(["--size", "4", "--generate", "10", "--generate-test", "4", "--workers", "1",
                               "--output-dir", str(data_dir / "b")])
    assert not leftover.exists()
    with pytest.raises(UserError, match="already holds a dataset"):  # a is put back first, then guarded
        build_sudoku_dataset.parse_args(["--generate", "4", "--output-dir", str(data_dir / "a")])
    assert snapshot(data_dir / "a") == before  # byte for byte
    assert sorted(p.name for p in data_dir.iterdir()) == ["a", "b", "notes.txt"]


def test_a_live_build_keeps_its_temporary_directory(data_dir):
    live = data_dir / f".b.tmp-{os.getppid()}-live"  # our parent is alive
    live.mkdir()
    build_sudoku_dataset.main(["--size", "4", "--generate", "10", "--generate-test", "4", "--workers", "1",
                               "--output-dir", str(data_dir / "b")])
    assert live.is_dir()


def test_a_new_run_refuses_a_directory_holding_another_run(tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    before = snapshot(run)
    args = [f"data_paths=[{tiny['data']}]", "evaluators=[]", "global_batch_size=16", "epochs=2", "eval_interval=2", "device=cpu", *TINY_ARCH]
    line = one_line_error(pretrain([*args, f"+checkpoint_path={run}"], cwd=tmp_path))
    assert "already holds a run" in line and f"resume={run}" in line
    assert snapshot(run) == before


def test_a_second_live_run_on_one_directory_is_refused(tiny, tmp_path):
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    shutil.copytree(tiny["run"], run)
    args = [f"data_paths=[{tiny['data']}]", "evaluators=[]", "global_batch_size=16", "epochs=2", "eval_interval=2", "device=cpu", *TINY_ARCH]
    for directory, command in ((run, [f"resume={run}"]), (fresh, [*args, f"+checkpoint_path={fresh}"])):
        with run_lock(str(directory)) as record_pid:  # this test process plays the live run
            record_pid()
            before = snapshot(directory)
            line = one_line_error(pretrain(command, cwd=tmp_path))
            assert f"another run (pid {os.getpid()}) is using {directory}" in line
            assert snapshot(directory) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, where the platform lets this process mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'not permitted'})")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_files(small_disk, tiny, tmp_path):
    line = last_line_error(sudoku_builder("--num-aug", "5000", "--output-dir", small_disk / "big"))
    assert "no space left on the device writing" in line and "all__inputs.npy" in line
    assert list(small_disk.iterdir()) == []  # the temporary directory went with the failed build
    run = small_disk / "run"
    result = pretrain([f"data_paths=[{tiny['data']}]", "evaluators=[]", "global_batch_size=16", "epochs=2", "eval_interval=2", "device=cpu",
                       *[a for a in TINY_ARCH if not a.startswith(("arch.hidden_size", "arch.puzzle_emb_ndim"))],
                       "arch.hidden_size=128", "arch.puzzle_emb_ndim=128", f"+checkpoint_path={run}"], cwd=tmp_path)
    assert "no space left on the device" in last_line_error(result)
    assert [p.name for p in run.iterdir() if ".tmp." in p.name] == []
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    line = one_line_error(sudoku_builder("--output-dir", small_disk / "new"))  # before any work
    assert f"{small_disk} is not writable: choose a writable directory" in line
