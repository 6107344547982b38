"""Watch a model solve a held-out puzzle step by step in the terminal:

    python -m inference.demo [checkpoint=<file or dir>] [index=0] [halt=adaptive|fixed] [delay=0.5]

Default checkpoint: the newest under checkpoints/Sudoku6-quick-ACT-torch/ (python pretrain.py +experiment=quickstart)."""
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from dataset.format import set_array_path
from dataset.kinds import KINDS
from models.loading import QUICKSTART_DIR, test_split_paths
from utils.errors import UserError, user_errors

OPTIONS = {"checkpoint": QUICKSTART_DIR, "index": "0", "halt": "adaptive", "halt_threshold": "0.5", "delay": "0.5",
           "device": "auto"}


def parse_args(argv: List[str]) -> Dict[str, str]:
    options = dict(OPTIONS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise UserError(f"unknown argument {arg!r}: use key=value with keys {', '.join(OPTIONS)}")
        options[key] = value
    return options


def held_out_puzzle(data_path: str, index: int):
    """Inputs and label tokens of test example `index`."""
    directory = os.path.join(data_path, "test")
    inputs = np.load(set_array_path(directory, "all", "inputs"), mmap_mode="r")
    if not 0 <= index < len(inputs):
        raise UserError(f"index={index}: the test split of {data_path} has {len(inputs)} puzzles")
    labels = np.load(set_array_path(directory, "all", "labels"), mmap_mode="r")
    return np.array(inputs[index]), np.array(labels[index])


def number(options: Dict[str, str], key: str, kind: type):
    try:
        return kind(options[key])
    except ValueError:
        raise UserError(f"{key}={options[key]!r} is not a{'n integer' if kind is int else ' number'}") from None


@user_errors
def main(argv: Optional[List[str]] = None) -> int:
    from inference.api import Solver
    from visualize.terminal import render_puzzle_answer, use_colour
    options = parse_args(sys.argv[1:] if argv is None else argv)
    index, threshold, delay = number(options, "index", int), number(options, "halt_threshold", float), number(options, "delay", float)
    if options["checkpoint"] == QUICKSTART_DIR and not os.path.isdir(QUICKSTART_DIR):
        raise UserError(f"no checkpoint under {QUICKSTART_DIR}/: give checkpoint=<run dir or weights file>, or train "
                        f"the quickstart one with python pretrain.py +experiment=quickstart")
    solver = Solver.from_checkpoint(options["checkpoint"], device=options["device"])
    if solver.kind not in KINDS:
        raise UserError(f"the demo draws {', '.join(KINDS)} puzzles, not {solver.kind} ones: use inference.api.Solver "
                        f"for this checkpoint")
    data_paths = test_split_paths(solver.loaded.run_config or {})
    if not data_paths or not os.path.isdir(os.path.join(data_paths[0], "test")):
        raise UserError(f"the test split of this run's dataset ({data_paths or 'unknown'}) is not on disk: build it first")
    puzzle, label = held_out_puzzle(data_paths[0], index)
    solution = solver.solve_tokens(puzzle[None], halt=options["halt"], halt_threshold=threshold, return_steps=True)[0]

    label = np.where(label == solver.loaded.metadata.ignore_label_id, 0, label)
    live = use_colour()  # redraw in place on a terminal; plain frames one after another otherwise
    print(f"{solver.loaded.weights}: test puzzle {index} of {data_paths[0]}, halt={options['halt']}")
    previous_height = 0
    for step, (tokens, confidence) in enumerate(zip(solution.step_tokens, solution.step_confidences), start=1):
        frame = render_puzzle_answer(puzzle, tokens, solver.kind, label=label, step=step)
        frame += f"\nstep {step}: halting confidence {confidence:.3f}, {int((tokens != label).sum())} cells differ from the label"
        if live and previous_height:
            print(f"\x1b[{previous_height}F\x1b[J", end="")
        print(frame, flush=True)
        previous_height = frame.count("\n") + 1
        if live and step < solution.steps:
            time.sleep(delay)
    solved = bool((solution.tokens == label).all())
    print(f"{'solved' if solved else 'not solved'} in {solution.steps} steps (confidence {solution.confidence:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
