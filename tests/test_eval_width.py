"""Test-time width (docs/evaluation.md#test-time-width): every symmetry map and its inverse round-trip, a solved
puzzle stays solved under every map, the vote rules pick the expected winner, and evaluate.py votes=N end to end."""

import numpy as np
import pytest

from dataset.checkers import MAZE_CHARSET, is_valid_maze_path, sudoku_box_shape, valid_sudoku_solutions
from evaluation.width import VOTE_RULES, maze_maps, sudoku_maps, symmetry_maps, vote, vote_counts
from tests.helpers import evaluate_report
from utils.errors import UserError


def solved_sudoku(n: int) -> np.ndarray:
    """A valid n x n solution (digits 1..n) from the shifted-pattern construction."""
    br, bc = sudoku_box_shape(n)
    return np.array([[(bc * (r % br) + r // br + c) % n + 1 for c in range(n)] for r in range(n)])


@pytest.mark.parametrize("n", [4, 6, 9])
def test_sudoku_maps_round_trip_and_keep_solved_puzzles_solved(n):
    rng = np.random.default_rng(0)
    solution = solved_sudoku(n)
    assert valid_sudoku_solutions(solution[None], solution[None])[0]
    puzzle = np.where(rng.random((n, n)) < 0.5, 0, solution)
    q, a = (puzzle.reshape(-1) + 1)[None], (solution.reshape(-1) + 1)[None]  # tokens: blank 1, digit d at d + 1
    maps = sudoku_maps(n, 40, seed=1)
    assert maps[0].name == "identity" and len(maps) == 40
    transposed = 0
    for m in maps:
        inverse = m.inverse()
        assert np.array_equal(inverse.apply(m.apply(a)), a) and np.array_equal(m.apply(inverse.apply(a)), a)
        assert np.array_equal(inverse.apply(m.apply(q)), q)
        assert valid_sudoku_solutions(m.apply(q), m.apply(a), tokens=True)[0], m.name
        assert (m.apply(q) == 1).sum() == (q == 1).sum()                   # blanks stay blanks
        assert m.tokens[0] == 0 and m.tokens[1] == 1                       # pad and blank are not relabelled
        transposed += "transposed" in m.name
    # square boxes (4x4, 9x9) draw transposes; 2x3 boxes cannot be transposed
    assert (transposed > 0) == (n != 6)
    # the maps differ from one another
    assert len({m.apply(a).tobytes() for m in maps}) > 30


def tiny_maze():
    maze = ("#####"
            "#S  #"
            "# # #"
            "#  G#"
            "#####")
    solved = ("#####"
              "#Soo#"
              "# #o#"
              "#  G#"
              "#####")
    tok = {ch: i + 1 for i, ch in enumerate(MAZE_CHARSET)}
    return np.array([[tok[c] for c in maze]]), np.array([[tok[c] for c in solved]])


def test_maze_maps_are_the_8_dihedral_maps_and_keep_solved_mazes_solved():
    maze, solved = tiny_maze()
    assert is_valid_maze_path(maze[0], solved[0])
    maps = maze_maps(5, 8)
    assert len({m.apply(solved).tobytes() for m in maps}) == 8
    for m in maps:
        inverse = m.inverse()
        assert np.array_equal(inverse.apply(m.apply(solved)), solved)
        assert np.array_equal(m.apply(inverse.apply(maze)), maze)
        assert is_valid_maze_path(m.apply(maze)[0], m.apply(solved)[0]), m.name
    with pytest.raises(UserError, match="8 symmetries"):
        maze_maps(5, 9)


def test_the_ignore_label_is_kept_and_other_data_is_refused():
    m = sudoku_maps(4, 2, seed=0)[1]
    labels = np.full((1, 16), -100)
    assert np.array_equal(m.apply(labels), labels)
    with pytest.raises(UserError, match="ARC"):
        symmetry_maps("arc", 900, 12, 4)


def test_vote_rules_on_hand_built_candidates():
    A, B, C = np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([3, 2, 1])
    candidates = np.stack([A, B, A, C, A, B])
    confidences = np.array([0.1, 0.9, 0.2, 0.3, 0.3, 0.8])
    valid = np.array([False, False, False, True, False, False])
    assert vote(candidates, confidences, "majority") == 0              # A: 3 votes
    assert vote(candidates, confidences, "confidence") == 1            # B: mean 0.85
    assert vote(candidates, confidences, "verifier", valid) == 3       # C: the only valid answer
    # without a valid candidate the verifier falls back to the majority
    assert vote(candidates, confidences, "verifier", np.zeros(6, dtype=bool)) == 0
    # two valid answers: the more frequent valid one wins
    assert vote(candidates, confidences, "verifier", np.array([False, True, False, True, False, True])) == 1
    # a tie in votes goes to the higher mean confidence, then to the earlier candidate
    assert vote(np.stack([A, B]), np.array([0.2, 0.6]), "majority") == 1
    assert vote(np.stack([A, B]), np.array([0.5, 0.5]), "majority") == 0
    # one candidate wins under every rule
    assert all(vote(A[None], np.array([0.5]), r, np.array([False])) == 0 for r in VOTE_RULES)
    with pytest.raises(UserError, match="vote='best'"):
        vote(candidates, confidences, "best")
    assert vote_counts(1) == [1] and vote_counts(8) == [1, 2, 4, 8] and vote_counts(6) == [1, 2, 4, 6]


@pytest.mark.slow
def test_evaluate_votes_over_sudoku_symmetries(tiny, tmp_path):
    out = tmp_path / "width"
    result, report = evaluate_report([f"checkpoint={tiny['run']}", "votes=4", "vote=verifier"], tmp_path, out)
    width = report["width"]
    assert width["votes"] == 4 and width["vote"] == "verifier"
    assert set(width["results"]) == set(VOTE_RULES)
    for rule in VOTE_RULES:
        assert set(width["results"][rule]) == {"1", "2", "4"}
        one = width["results"][rule]["1"]
        # one vote is the plain evaluation of the unchanged puzzles (the verifier has one candidate to take)
        assert one["exact_accuracy"] == pytest.approx(report["results"]["fixed"]["all"]["exact_accuracy"])
        assert one["count"] == report["results"]["fixed"]["all"]["count"]
    assert width["exact_accuracy"] == width["results"]["verifier"]["4"]["exact_accuracy"]
    assert "votes" in result.stdout and "verifier [95% CI]" in result.stdout


def tiny_rows(seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return [("all", {"inputs": torch.randint(1, 5, (3, 4), generator=g), "labels": torch.randint(1, 5, (3, 4), generator=g),
                     "puzzle_identifiers": torch.tensor([1, 2, 3])}, 3)]


def test_latent_noise_perturbs_only_the_later_variants_and_is_undone():
    import torch
    from evaluation.width import TokenMap, evaluate_width, initial_state_buffers, noisy_initial_state
    from tests.helpers import tiny_head
    torch.manual_seed(0)
    head = tiny_head().eval()
    assert len(initial_state_buffers(head)) == 2  # H_init, L_init
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with noisy_initial_state(head, 1.0, seed=3):
        shifted = [b.clone() for b in initial_state_buffers(head)]
    with noisy_initial_state(head, 1.0, seed=3):
        assert all(torch.equal(a, b) for a, b in zip(shifted, initial_state_buffers(head)))  # seeded
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
    assert not torch.equal(shifted[0], before["model.inner.H_init"])

    identity = TokenMap("identity", np.arange(4), np.arange(5))
    quiet = evaluate_width(head, tiny_rows(), [identity] * 3, torch.device("cpu"))
    # identical variants: every width and rule scores as one
    assert len({r[n]["exact_accuracy"] for r in quiet.values() for n in r}) == 1 and quiet["majority"][1]["count"] == 3
    noisy = evaluate_width(head, tiny_rows(), [identity] * 3, torch.device("cpu"), latent_noise=5.0)
    assert noisy["majority"][1] == quiet["majority"][1]  # the first variant is never perturbed
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
