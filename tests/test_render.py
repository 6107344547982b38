import numpy as np
import pytest
from PIL import Image

from dataset.checkers import MAZE_CHARSET
from visualize.decode import decode
from visualize.images import MARGIN, TITLE_PX, WRONG, grid_image, save_steps_gif, save_steps_png, steps_image
from visualize.palette import ARC_ANSI, ARC_RGB, ansi256
from visualize.terminal import render_grid, render_puzzle_answer, side_by_side

LABEL = np.array([[1, 2, 3, 4],
                  [3, 4, 1, 2],
                  [2, 1, 4, 3],
                  [4, 3, 2, 1]]) + 1            # tokens: digit + 1
PUZZLE = np.where(np.arange(16).reshape(4, 4) < 4, LABEL, 1)  # first row given, blanks are token 1
ANSWER = LABEL.copy()
ANSWER[3, 1] = 2                                 # wrong digit 1 where 3 belongs
ANSWER[2, 2] = 1                                 # left blank

MAZE = "#####" "#S  #" "# # #" "#  G#" "#####"
MAZE_SOLVED = "#####" "#Soo#" "# #o#" "#  G#" "#####"


def maze_tokens(text):
    return np.array([MAZE_CHARSET.index(ch) + 1 for ch in text])


def arc_tokens(grid):
    """Encode a small colour grid into the 30x30 layout: colours + 2, end markers right of and below it."""
    grid = np.asarray(grid)
    h, w = grid.shape
    tokens = np.zeros((30, 30), dtype=np.int64)
    tokens[:h, :w] = grid + 2
    tokens[h, :w + 1] = 1
    tokens[:h + 1, w] = 1
    return tokens.reshape(-1)


ARC_GRID = [[0, 1, 2], [3, 4, 5]]


def test_decode_each_kind():
    assert decode(ANSWER, "sudoku")[2].tolist() == [2, 1, 0, 3]
    assert decode(np.r_[0, LABEL.reshape(-1)[1:]], "sudoku")[0, 0] == -1  # pad is no digit
    assert "".join(decode(maze_tokens(MAZE_SOLVED), "maze")[1]) == "#Soo#"
    assert decode(np.r_[0, maze_tokens(MAZE)[1:]], "maze")[0, 0] == "?"
    assert decode(arc_tokens(ARC_GRID), "arc").tolist() == ARC_GRID


def test_decode_bad_input():
    with pytest.raises(ValueError, match="unknown puzzle kind 'chess'; use one of sudoku, maze, arc"):
        decode(LABEL, "chess")
    with pytest.raises(ValueError, match="20 cells is not a square grid"):
        decode(np.ones(20), "sudoku")
    with pytest.raises(ValueError, match="expected 30x30 = 900 cells, got 16"):
        decode(LABEL, "arc")


def test_ansi256_hand_values():
    assert ansi256((0, 0, 0)) == 16
    assert ansi256((255, 255, 255)) == 231
    assert ansi256((128, 128, 128)) == 244            # grey ramp 8 + 10 * 12 beats cube (135, 135, 135)
    assert ansi256((255, 65, 54)) == 16 + 36 * 5 + 6 * 1 + 1  # levels 255, 95, 95
    assert ARC_ANSI[1] == 16 + 6 * 2 + 4                # ARC blue (0, 116, 217) -> levels 0, 135, 215


def test_sudoku_text_with_box_lines_and_wrong_cells():
    assert render_puzzle_answer(PUZZLE, ANSWER, "sudoku", label=LABEL, step=3, colour=False) == "\n".join([
        "puzzle       step 3       label",
        "1 2 | 3 4    1 2 | 3 4    1 2 | 3 4",
        ". . | . .    3 4 | 1 2    3 4 | 1 2",
        "----+-----   ----+-----   ----+-----",
        ". . | . .    2 1 | .*3    2 1 | 4 3",
        ". . | . .    4 1*| 2 1    4 3 | 2 1"])


def test_coloured_text():
    sudoku = render_grid(ANSWER, "sudoku", label=LABEL, puzzle=PUZZLE, colour=True)
    assert "\x1b[1;38;5;196m1\x1b[0m*" in sudoku.split("\n")[-1]  # the wrong digit in red, still marked
    arc = render_grid(arc_tokens(ARC_GRID), "arc", colour=True).split("\n")
    assert arc[0] == "".join(f"\x1b[48;5;{ARC_ANSI[v]}m  \x1b[0m" for v in (0, 1, 2))
    assert len(arc) == 2
    # ANSI codes take no width: the next column starts at the same place on every line
    lines = side_by_side([("arc", "\n".join(arc)), ("x", "y\ny")]).split("\n")
    assert [line.rsplit("   ", 1)[1] for line in lines] == ["x", "y", "y"]


def test_maze_and_arc_plain_text():
    assert render_puzzle_answer(maze_tokens(MAZE), maze_tokens(MAZE_SOLVED), "maze", colour=False) == "\n".join([
        "puzzle   answer", "#####    #####", "#S  #    #Soo#", "# # #    # #o#", "#  G#    #  G#", "#####    #####"])
    assert render_grid(arc_tokens(ARC_GRID), "arc", colour=False) == "0 1 2\n3 4 5"


def test_grid_image_size_and_colours():
    image = grid_image(ANSWER, "sudoku", label=LABEL, puzzle=PUZZLE, cell_px=10)
    assert image.size == (40, 40)
    assert image.getpixel((1 * 10 + 1, 3 * 10 + 1)) == WRONG     # inside the wrong cell (3, 1), off the digit
    assert image.getpixel((0 * 10 + 1, 3 * 10 + 1)) != WRONG
    arc = grid_image(arc_tokens(ARC_GRID), "arc", cell_px=8)
    assert arc.size == (3 * 8, 2 * 8) and arc.getpixel((8 + 4, 8 + 4)) == ARC_RGB[4]


def test_png_strip_and_gif_frames(tmp_path):
    steps = [PUZZLE, ANSWER, LABEL]
    slot = 4 * 10
    png = save_steps_png(tmp_path / "out" / "steps.png", PUZZLE, steps, "sudoku", label=LABEL, cell_px=10)
    # puzzle + 3 steps + label, each in a 40 px slot with margins, under the title band
    assert Image.open(png).size == (MARGIN + 5 * (slot + MARGIN), TITLE_PX + slot + MARGIN)
    gif = Image.open(save_steps_gif(tmp_path / "steps.gif", PUZZLE, [LABEL] * 4, "sudoku", label=LABEL, cell_px=10))
    assert gif.n_frames == 4                                     # equal answers still give one frame per step
    assert gif.size == (MARGIN + 3 * (slot + MARGIN), TITLE_PX + slot + MARGIN)


def test_arc_frames_share_the_largest_slot(tmp_path):
    small, large = arc_tokens([[1]]), arc_tokens(np.ones((4, 5), dtype=int))
    gif = Image.open(save_steps_gif(tmp_path / "arc.gif", small, [small, large, np.zeros(900, dtype=int)], "arc", cell_px=4))
    assert gif.n_frames == 3 and gif.size == (MARGIN + 2 * (5 * 4 + MARGIN), TITLE_PX + 4 * 4 + MARGIN)
    assert steps_image(small, [large], "arc", cell_px=4).size == gif.size
    with pytest.raises(ValueError, match="no supervision steps"):
        steps_image(small, [], "arc")
