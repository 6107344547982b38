"""The vectorised pieces of the Sudoku and ARC builders agree with plain per-example versions."""
import random

import numpy as np
import pytest

from dataset import build_sudoku_dataset as sudoku_builder
from dataset.arc_codec import augment_grid, augment_name, augment_names, encode_grid
from dataset.build_arc_dataset import FlatPuzzle, content_key_layout, encode_examples, paste_blocks, select_augmentations
from dataset.generators import sudoku as gen


# ---------------------------------------------------------------- ARC

def test_paste_blocks_by_hand():
    canvas = np.zeros(2 * 900, dtype=np.uint8)
    blocks = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], dtype=np.uint8)
    paste_blocks(canvas, np.array([0, 900 + 31]), blocks)  # second block at row 1, column 1 of the second canvas
    grids = canvas.reshape(2, 30, 30)
    assert (grids[0, :2, :2] == [[1, 2], [3, 4]]).all() and (grids[1, 1:3, 1:3] == [[5, 6], [7, 8]]).all()
    assert canvas.sum() == blocks.sum()
    paste_blocks(canvas, np.array([2 * 30 + 28]), 9, (1, 2))  # a scalar over a 1x2 block ending at the right edge
    assert (grids[0, 2, 28:] == 9).all() and canvas.sum() == blocks.sum() + 18


def some_puzzle(seed=0, examples=3):
    rng = np.random.default_rng(seed)
    grids = []
    for _ in range(examples):
        h, w = rng.integers(1, 8, size=2)
        grids += [rng.integers(0, 4, size=(h, w)).astype(np.uint8), rng.integers(0, 10, size=(w, h + 1)).astype(np.uint8)]
    return grids


def offset_of(seq):
    """Top-left of the grid on an encoded 30x30 canvas (first row and column holding a colour)."""
    colour = seq.reshape(30, 30) >= 2
    return np.flatnonzero(colour.any(1))[0], np.flatnonzero(colour.any(0))[0]


@pytest.mark.parametrize("translate", [False, True])
def test_encode_examples_equals_encode_grid_per_example(translate):
    grids = some_puzzle()
    puzzle = FlatPuzzle(grids)
    tids, maps, colours = select_augmentations(puzzle, 20, np.random.default_rng(1))
    example_ids = np.array([0, 2])
    inputs, labels = encode_examples(puzzle, colours, tids, example_ids, translate, np.random.default_rng(2))
    assert inputs.shape == labels.shape == (len(tids) * 2, 900) and inputs.flags.c_contiguous
    unmoved = 0
    for v, (tid, colour_map) in enumerate(zip(tids, maps)):
        for e, example in enumerate(example_ids):
            row = v * len(example_ids) + e
            r0, c0 = offset_of(inputs[row]) if translate else (0, 0)
            assert offset_of(labels[row]) == (r0, c0) or not translate  # a pair moves together
            for seq, grid in ((inputs[row], grids[2 * example]), (labels[row], grids[2 * example + 1])):
                assert (seq == encode_grid(augment_grid(grid, tid, colour_map), r0, c0)).all()
            unmoved += (r0, c0) == (0, 0)
    assert unmoved >= len(tids)  # at least one example per augmented puzzle stays at the corner


def content(puzzle, tid, colour_map):
    return puzzle.shape_keys[tid] + puzzle.augmented_colours(np.array([tid]), colour_map[None]).tobytes()


@pytest.mark.parametrize("grids", [
    some_puzzle(3),
    [np.array([[1, 0, 1], [0, 2, 0], [1, 0, 1]], np.uint8)] * 2,    # all 8 symmetries, two colours
    [np.array([[1, 2], [2, 1]], np.uint8), np.array([[3]], np.uint8)],  # transposing = swapping colours 1 and 2
])
def test_content_keys_equal_exactly_when_augmented_puzzles_are_equal(grids):
    puzzle = FlatPuzzle(grids)
    rng = np.random.default_rng(0)
    tids = rng.integers(0, 8, size=300)
    maps = np.concatenate([np.zeros((300, 1), np.uint8), (np.argsort(rng.random((300, 9)), 1) + 1).astype(np.uint8)], 1)
    maps[150:] = np.arange(10)  # many maps that permute only colours 1-3, so they often agree on the used ones
    maps[150:, 1:4] = np.argsort(rng.random((150, 3)), 1) + 1
    keys = puzzle.content_keys(tids, maps)
    contents = [content(puzzle, t, m) for t, m in zip(tids, maps)]
    for i in range(0, 300, 7):
        for j in range(300):
            assert (keys[i] == keys[j]) == (contents[i] == contents[j])


def test_content_key_layout_by_hand():
    # grid B is grid A with colours 1 and 2 swapped: one class, reading m at 2 and 1 for A's colours 1 and 2
    a, b = np.array([0, 1, 2]), np.array([0, 2, 1])
    key_class, key_colours = content_key_layout([a, b, a, b, a, a, a, np.array([0, 0, 1])], [b"s"] * 7 + [b"t"])
    assert list(key_class) == [0, 0, 0, 0, 0, 0, 0, 1]
    assert list(key_colours[0, :3]) == [0, 1, 2] and list(key_colours[1, :3]) == [0, 2, 1]
    assert list(key_colours[7, :2]) == [0, 1] and not key_colours[:, 3:].any()


def test_selected_augmentations_are_distinct_and_start_with_the_original():
    grids = [np.array([[1, 0], [0, 1]], np.uint8), np.array([[1, 1], [0, 0]], np.uint8)]
    puzzle = FlatPuzzle(grids)
    tids, maps, colours = select_augmentations(puzzle, 50, np.random.default_rng(0))
    assert tids[0] == 0 and (maps[0] == np.arange(10)).all() and (colours[0] == puzzle.flat).all()
    contents = {content(puzzle, t, m) for t, m in zip(tids, maps)}
    assert len(contents) == len(tids) == 51
    assert (colours == puzzle.augmented_colours(tids, maps)).all()


def test_augment_names_match_augment_name():
    tids = np.array([0, 7, 3])
    maps = np.array([np.arange(10), [0, 9, 8, 7, 6, 5, 4, 3, 2, 1], [0, 2, 1, 3, 4, 5, 6, 7, 8, 9]], dtype=np.uint8)
    assert augment_names("abc", tids, maps) == [augment_name("abc", t, m) for t, m in zip(tids, maps)]
    assert augment_names("abc", tids, maps)[1] == "abc|||t7|||0987654321"


# ---------------------------------------------------------------- Sudoku

@pytest.mark.parametrize("size", [4, 6, 9])
def test_augment_flat_equals_the_per_example_mapping(size):
    rng = np.random.default_rng(size)
    boards = rng.integers(0, size + 1, size=(40, 2, size * size)).astype(np.uint8)
    aug = sudoku_builder.random_augmentations(rng, 40, size)
    out = sudoku_builder.augment_flat(boards, aug)
    assert out.dtype == np.uint8 and out.shape == boards.shape
    for m in range(40):
        for k in range(2):
            grid = boards[m, k].reshape(size, size)
            grid = grid.T if aug["transpose"][m] else grid
            expected = aug["digit_map"][m][grid[aug["rows"][m]][:, aug["cols"][m]]]
            assert (out[m, k].reshape(size, size) == expected).all()


@pytest.mark.parametrize("size", [4, 6, 9])
def test_removal_check_agrees_with_counting_solutions(size):
    """The shortcut (givens force the removed clue) and the search give the same verdict as a full count."""
    g = gen.geometry(size)
    rng = random.Random(size)
    solution = gen.random_solution(size, rng)
    puzzle = solution[:]
    order = list(range(size * size))
    rng.shuffle(order)
    for cell in order:
        value, puzzle[cell] = puzzle[cell], 0
        unique = gen.count_solutions(puzzle, size) == 1
        assert gen._removal_keeps_unique(g, puzzle, cell, value) == unique
        if not unique:
            puzzle[cell] = value


def test_propagation_of_changed_units_equals_a_full_rescan():
    g = gen.geometry(9)
    rng = random.Random(0)
    for i in range(30):
        puzzle = gen.generate_indexed((9, 5, 0, i, 0)).puzzle
        cand, queue = gen._initial(g, puzzle)
        assert gen._propagate(g, cand, queue)
        open_cells = [c for c, m in enumerate(cand) if m & (m - 1)]
        if not open_cells:
            continue
        cell = rng.choice(open_cells)
        bits = [1 << d for d in range(9) if cand[cell] >> d & 1]
        for bit in bits:
            partial, full = cand[:], cand[:]
            partial[cell] = full[cell] = bit
            ok_partial = gen._propagate(g, partial, [cell], dirty=g.unit_bits[cell])
            ok_full = gen._propagate(g, full, [cell])
            assert ok_partial == ok_full and (not ok_full or partial == full)


def test_initial_candidates_reject_clashes_and_dead_cells():
    g = gen.geometry(4)
    assert gen._initial(g, [1, 1] + [0] * 14) is None
    dead = [0, 1, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]  # cell 0 sees 1, 2, 3 ... and 4 below
    dead[12] = 4
    assert gen._initial(g, dead) is None
    cand, queue = gen._initial(g, [1, 2, 3, 0] + [0] * 12)
    assert cand[3] == 0b1000 and queue == [3]
