"""Every entry point turns bad input into one line `error: <problem>: <fix>` on stderr, exit code 2 and no
traceback, before any heavy work. The table runs in one process (tests/_cli_runner.py) that executes each command
as `python <script>` / `python -m <module>` would."""
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.format import set_array_path
from tests.helpers import QUIET_ENV, ROOT, TINY_ARCH, build_sudoku4, pretrain_command
from utils.errors import exit_with, user_errors



class Evil:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def damaged_copy(source: Path, target: Path, split: str, field: str, change) -> Path:
    """A copy of the dataset whose `<split>/all__<field>.npy` is replaced by change(array) (bytes for truncation)."""
    shutil.copytree(source, target)
    path = set_array_path(target / split, "all", field)
    result = change(np.load(path))
    if isinstance(result, bytes):
        path.write_bytes(result)
    else:
        np.save(path, result)
    return target


def with_metadata(source: Path, target: Path, **changes) -> Path:
    shutil.copytree(source, target)
    meta_path = target / "train" / "dataset.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **changes}))
    return target


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    """The inputs the table refers to: a good dataset, damaged copies, unusable checkpoint files."""
    base = tmp_path_factory.mktemp("bad_inputs")
    good = build_sudoku4(base / "good", n_train=20, n_test=5, num_aug=1)
    meta = json.loads((good / "train" / "dataset.json").read_text())
    inputs_bytes = set_array_path(good / "train", "all", "inputs").read_bytes()
    weights = sorted(tiny["run"].glob("step_*"))[-1].read_bytes()
    f = {"good": good, "base": base, "marker": base / "pwned"}
    f["truncated_npy"] = damaged_copy(good, base / "truncated_npy", "train", "inputs", lambda a: inputs_bytes[:len(inputs_bytes) // 2])
    f["labels_out"] = damaged_copy(good, base / "labels_out", "train", "labels", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, meta["vocab_size"], a).astype(a.dtype))
    f["inputs_out"] = damaged_copy(good, base / "inputs_out", "train", "inputs", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, 200, a).astype(a.dtype))
    f["lengths"] = damaged_copy(good, base / "lengths", "train", "labels", lambda a: a[:-1])
    f["ids_out"] = damaged_copy(good, base / "ids_out", "train", "puzzle_identifiers", lambda a: a + meta["num_puzzle_identifiers"])
    f["test_labels_out"] = damaged_copy(good, base / "test_labels_out", "test", "labels", lambda a: a * 0 + 99)
    f["seq_len"] = with_metadata(good, base / "seq_len", seq_len=meta["seq_len"] + 1)
    (base / "a_file").write_text("not a dataset")
    # one valid ARC task, so the builder gets past its inputs without the shared ARC files
    (base / "tiny_arc_evaluation_challenges.json").write_text(json.dumps(
        {"t1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]}}))
    f["notes"] = base / "notes"
    f["notes"].mkdir()
    (f["notes"] / "todo.txt").write_text("keep me")
    (base / "empty_runs").mkdir()
    for name, data in {"truncated_ckpt": weights[:len(weights) // 2], "empty_ckpt": b"", "random_ckpt": os.urandom(4096)}.items():
        (base / name).write_bytes(data)
    torch.save({"x": Evil(f["marker"])}, base / "evil_ckpt")
    # run directories holding one bad weights file beside the tiny run's config
    for name in ("truncated_ckpt", "evil_ckpt"):
        run = base / f"run_{name}"
        run.mkdir()
        shutil.copy(tiny["run"] / "all_config.yaml", run / "all_config.yaml")
        shutil.copy(base / name, run / "step_1")
    return f


def pretrain_cases(f, tiny):
    g, b = f["good"], f["base"]
    run = f"+checkpoint_path={b / 'run'}"
    P = ["pretrain.py", f"data_paths=[{g}]", "evaluators=[]", "global_batch_size=8", "epochs=2", "eval_interval=2",
         "device=cpu", "wandb.mode=disabled", *TINY_ARCH, run]

    def data(path):
        return ["pretrain.py", f"data_paths=[{path}]", *P[2:]]

    return [
        # configuration values
        ("lr negative", P + ["lr=-1"], "'lr' = -1"),
        ("lr nan", P + ["lr=nan"], "'lr'"),
        ("lr inf", P + ["lr=inf"], "'lr'"),
        ("puzzle_emb_lr zero", P + ["puzzle_emb_lr=0"], "'puzzle_emb_lr'"),
        ("beta1 above 1", P + ["beta1=2.0"], "'beta1' = 2.0"),
        ("beta2 equal 1", P + ["beta2=1.0"], "'beta2'"),
        ("ema_rate 5", P + ["ema_rate=5"], "'ema_rate'"),
        ("lr_min_ratio 2", P + ["lr_min_ratio=2"], "'lr_min_ratio'"),
        ("weight_decay negative", P + ["weight_decay=-0.1"], "'weight_decay'"),
        ("grad_clip inf", P + ["grad_clip=inf"], "'grad_clip'"),
        ("eval_save_outputs nonsense", P + ["eval_save_outputs=[nonsense]"], "'eval_save_outputs.0' = 'nonsense'"),
        ("epochs not divisible", P + ["epochs=3"], "must divide epochs=3"),
        ("batch zero", P + ["global_batch_size=0"], "'global_batch_size'"),
        ("checkpoint_keep zero", P + ["checkpoint_keep=0"], "'checkpoint_keep'"),
        ("typo'd arch key", P + ["+arch.hiden_size=3"], "unknown arch key 'arch.hiden_size'"),
        ("negative width", P + ["arch.hidden_size=-32"], "arch.hidden_size=-32"),
        ("hydra: unknown key", P + ["data_pathz=[x]"], "unknown config key 'data_pathz': remove it or check its spelling"),
        ("plus unknown key", P + ["+data_pathz=[x]"], "unknown config key 'data_pathz'"),
        ("hydra: unknown arch", P + ["arch=nonexistent"], "arch/nonexistent"),
        ("hydra: bad syntax", P + ["lr=[1"], "lr=[1"),
        ("resume with load_checkpoint", P + [f"resume={tiny['run']}", f"+load_checkpoint={b / 'random_ckpt'}"], "give only one of them"),
        ("no GPU", P + ["device=cuda"], "no CUDA GPU"),
        ("unknown evaluator", P + ["evaluators=[{name: nosuch@Nothing}]"], "evaluators: 'nosuch@Nothing'"),
        ("ARC evaluator on Sudoku data", P + ["evaluators=[{name: arc@ARC}]"], "test_puzzles.json not found"),
        # sizes
        ("batch beyond the data", P + ["global_batch_size=100000"], "global_batch_size=100000 is larger than the 40 examples"),
        ("group order beyond reason", P + ["epochs=1000000000", "eval_interval=null"], "set eval_interval to at most"),
        # data and files
        ("missing dataset", data(b / "nowhere"), "not found: build it first"),
        ("dataset is a file", data(b / "a_file"), "is a file, not a dataset directory"),
        ("test data nowhere", P + [f"data_paths_test=[{b / 'nowhere'}]"], "is not a directory"),
        ("truncated npy", data(f["truncated_npy"]), "not a readable .npy array"),
        ("wrong seq_len", data(f["seq_len"]), "expected [examples, seq_len="),
        ("labels outside vocab", data(f["labels_out"]), "labels.npy: value"),
        ("inputs outside vocab", data(f["inputs_out"]), "inputs.npy: value 200"),
        ("lengths differ", data(f["lengths"]), "labels.npy: shape"),
        ("puzzle id beyond the table", data(f["ids_out"]), "outside [0, num_puzzle_identifiers=1)"),
        ("load_checkpoint missing", P + [f"+load_checkpoint={b / 'nowhere.pt'}"], "not found"),
        ("load_checkpoint truncated", P + [f"+load_checkpoint={b / 'truncated_ckpt'}"], "truncated or corrupt"),
        ("load_checkpoint empty", P + [f"+load_checkpoint={b / 'empty_ckpt'}"], "truncated or corrupt"),
        ("load_checkpoint random", P + [f"+load_checkpoint={b / 'random_ckpt'}"], "truncated or corrupt"),
        ("load_checkpoint malicious", P + [f"+load_checkpoint={b / 'evil_ckpt'}"], "(posix.system) that safe loading refuses"),
        ("resume nowhere", ["pretrain.py", f"resume={b / 'nowhere'}"], "not found"),
        ("resume latest, no run there", ["pretrain.py", "resume=latest", f"+checkpoint_path={b / 'empty_runs'}"], "no training state"),
        ("same run name", P[:-1] + [f"+checkpoint_path={tiny['run']}"], "already holds a run"),
    ]


def evaluate_cases(f, tiny):
    b = f["base"]
    E = ["evaluate.py", f"checkpoint={tiny['run']}", "device=cpu"]
    return [
        ("evaluate: no checkpoint", ["evaluate.py"], "checkpoint is missing"),
        ("evaluate: checkpoint nowhere", ["evaluate.py", f"checkpoint={b / 'nowhere'}"], "not found"),
        ("evaluate: truncated", ["evaluate.py", f"checkpoint={b / 'run_truncated_ckpt'}", "device=cpu"], "truncated or corrupt"),
        ("evaluate: malicious", ["evaluate.py", f"checkpoint={b / 'run_evil_ckpt'}", "device=cpu"], "posix.system"),
        ("evaluate: halt_threshold 2", E + ["halt_threshold=2.0"], "'halt_threshold' = 2.0"),
        ("evaluate: halt_threshold 0", E + ["halt_threshold=0"], "'halt_threshold'"),
        ("evaluate: bad halt", E + ["halt=sometimes"], "'halt'"),
        ("evaluate: data nowhere", E + [f"data_paths=[{b / 'nowhere'}]"], "is not a directory"),
        ("evaluate: test labels outside vocab", E + [f"data_paths=[{f['test_labels_out']}]"], "labels.npy: value 99"),
        ("evaluate: no GPU", E[:-1] + ["device=cuda"], "no CUDA GPU"),
        ("evaluate: unknown key", E + ["halt_treshold=0.5"], "unknown config key 'halt_treshold'"),
    ]


def builder_cases(f):
    g, b = f["good"], f["base"]
    return [
        ("builder into a directory of datasets", ["-m", "dataset.build_sudoku_dataset", "--size", "4", "--generate", "20",
                                                  "--generate-test", "5", "--output-dir", str(b)], "is not empty and holds no dataset"),
        ("builder onto a file", ["-m", "dataset.build_sudoku_dataset", "--generate", "5", "--output-dir", str(b / "a_file")], "is an existing file"),
        ("builder over a dataset", ["-m", "dataset.build_sudoku_dataset", "--generate", "5", "--output-dir", str(g)], "pass --force"),
        ("builder into the working directory", ["-m", "dataset.build_sudoku_dataset", "--generate", "5", "--output-dir", "."], "is not empty"),
        ("builder: negative count", ["-m", "dataset.build_sudoku_dataset", "--num-aug", "-1", "--output-dir", str(b / "x")], "--num-aug must be >= 0"),
        ("maze builder: tiny size", ["-m", "dataset.build_maze_dataset", "--size", "2", "--output-dir", str(b / "x")], "--size 2"),
        ("maze builder over notes", ["-m", "dataset.build_maze_dataset", "--generate", "4", "--size", "7", "--output-dir", str(b / "notes")], "holds no dataset"),
        ("ARC builder: no files", ["-m", "dataset.build_arc_dataset", "--input-file-prefix", str(b / "none"), "--output-dir", str(b / "x")], "file not found"),
        ("ARC builder onto a file", ["-m", "dataset.build_arc_dataset", "--input-file-prefix", str(b / "tiny_arc"), "--subsets",
                                     "evaluation", "--output-dir", str(b / "a_file")], "is an existing file"),
        ("custom builder: no train file", ["-m", "dataset.build_custom_dataset", "--train", str(b / "none.json"), "--test", str(b / "none.json"), "--output-dir", str(b / "x")], "none.json"),
        ("arithmetic builder: 0 digits", ["-m", "dataset.build_arithmetic_dataset", "--digits", "0", "--output-dir", str(b / "x")], "--digits 0"),
        ("text builder: seq_len 0", ["-m", "dataset.build_text_dataset", "--input", str(b / "a_file"), "--seq-len", "0", "--output-dir", str(b / "x")], "--seq-len=0"),
        ("validate: missing", ["-m", "dataset.validate", str(b / "nowhere")], "is not a directory"),
        ("validate: bad labels", ["-m", "dataset.validate", str(f["labels_out"])], "labels.npy: value"),
    ]


def other_cases(f, tiny):
    """The language models, the demo, benches."""
    g, b = f["good"], f["base"]
    return [
        ("export: not found", ["-m", "models.lm.export", str(b / "nowhere"), str(b / "out")], "not found"),
        ("export: not an LM run", ["-m", "models.lm.export", str(tiny["run"]), str(b / "out")], "not trm_lm"),
        ("export: into a dataset", ["-m", "models.lm.export", str(tiny["run"]), str(g)], "is not empty"),
        ("generate: not found", ["-m", "models.lm.generate", str(b / "nowhere"), "--prompt", "hi"], "not found"),
        ("generate: no tokens", ["-m", "models.lm.generate", str(b / "nowhere"), "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens=0"),
        ("demo: checkpoint nowhere", ["-m", "inference.demo", f"checkpoint={b / 'nowhere'}"], "not found"),
        ("demo: index not a number", ["-m", "inference.demo", "index=x"], "index='x' is not an integer"),
        ("demo: unknown option", ["-m", "inference.demo", "halting=fixed"], "unknown argument 'halting=fixed'"),
        ("demo: malicious checkpoint", ["-m", "inference.demo", f"checkpoint={b / 'run_evil_ckpt'}", "device=cpu"], "posix.system"),
        ("bench: no ARC data", ["-m", "bench.dataset_build", "--which", "arc", "--arc-prefix", str(b / "none")], "pass --arc-prefix"),
        ("study: unknown model", ["-m", "bench.replicate", "models=[trn]"], "unknown model 'trn'"),
    ]


def table(f, tiny):
    """(name, command, a fragment the error line must hold)."""
    return pretrain_cases(f, tiny) + evaluate_cases(f, tiny) + builder_cases(f) + other_cases(f, tiny)


# The case names, for the test ids (the paths in the commands exist only once the fixtures have run).
_PLACEHOLDER = defaultdict(lambda: Path("placeholder"))
CASE_NAMES = [name for name, _, _ in table(_PLACEHOLDER, _PLACEHOLDER)]


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def results(files, tiny):
    cases = table(files, tiny)
    before = {name: snapshot(files[name]) for name in ("good", "notes")} | {"run": snapshot(tiny["run"])}
    spec, out = files["base"] / "cases.json", files["base"] / "results.json"
    spec.write_text(json.dumps([{"cmd": cmd, "cwd": str(files["base"])} for _, cmd, _ in cases]))
    subprocess.run([sys.executable, str(ROOT / "tests" / "_cli_runner.py"), str(spec), str(out)], cwd=ROOT,
                   env=QUIET_ENV, check=True, timeout=900)
    after = {name: snapshot(files[name]) for name in ("good", "notes")} | {"run": snapshot(tiny["run"])}
    by_name = {name: (fragment, r) for (name, _, fragment), r in zip(cases, json.loads(out.read_text()))}
    return by_name, before, after


def test_the_table_has_at_least_40_distinct_bad_inputs():
    assert len(set(CASE_NAMES)) == len(CASE_NAMES) >= 40


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_line_exit_2_and_no_traceback(results, name):
    fragment, result = results[0][name]
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert result["escaped"] is None, f"{name}: {result['escaped']}"
    assert result["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {result}"
    assert "Traceback" not in result["stderr"]
    assert fragment in lines[0], f"{name}: {lines[0]}"


@pytest.mark.slow
def test_bad_inputs_left_every_file_as_it_was(results, files):
    _, before, after = results
    assert before == after  # the datasets, the notes directory and the trained run, byte for byte
    assert not files["marker"].exists()  # the malicious pickle ran nothing
    leftovers = [p.name for p in files["base"].iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_only_rank_0_prints_the_line(monkeypatch, capsys):
    @user_errors
    def fails():
        from utils.errors import UserError
        raise UserError("bad value: use a good one")

    for rank, expected in (("0", "error: bad value: use a good one\n"), ("1", "")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as stopped:
            fails()
        assert stopped.value.code == 2 and capsys.readouterr().err == expected


def test_a_full_disk_deep_in_a_chain_is_one_line(capsys):
    import errno

    @user_errors
    def saves():
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/mnt/run/state_3.pt")
        except OSError as e:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from e

    with pytest.raises(SystemExit) as stopped:
        saves()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("error: no space left on the device writing '/mnt/run/state_3.pt': free space or "
                                       "choose another directory\n")


def test_other_exceptions_are_not_hidden():
    @user_errors
    def bug():
        raise KeyError("a bug, not the user's input")

    with pytest.raises(KeyError):
        bug()
    with pytest.raises(SystemExit):  # and exit_with stops with code 2
        exit_with("x")


@pytest.mark.slow
def test_under_torchrun_the_line_is_printed_once_and_no_rank_fails_on_its_own(tmp_path):
    cmd = pretrain_command(["lr=-1", "device=cpu"], nproc=2)
    result = subprocess.run(cmd, cwd=tmp_path, env=QUIET_ENV, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: bad config key 'lr' = -1: Input should be greater than 0"], result.stderr[-3000:]
    # torchrun's own report lists the ranks; none died of the other's exit (a closed connection) with a traceback
    assert "pretrain.py\", line" not in result.stderr and "Connection closed" not in result.stderr
    # the first rank to exit is reported with code 2; torchrun may stop the other (SIGTERM) before it exits itself
    codes = re.findall(r"exitcode  : (-?\d+)", result.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, codes
