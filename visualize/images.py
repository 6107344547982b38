"""PNG and GIF pictures of the reasoning: the puzzle, the answer after each supervision step and the label,
drawn with Pillow. A grid of R x C cells is exactly R*cell_px x C*cell_px pixels; panels sit in equal slots."""
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dataset.checkers import sudoku_box_shape
from visualize.decode import decode, wrong_cells
from visualize.palette import ARC_RGB, MAZE_RGB

CELL_PX = {"sudoku": 24, "maze": 8, "arc": 12}
MARGIN = 6      # around and between panels
TITLE_PX = 16   # band above the panels for their titles
BACKGROUND, INK, GRID_LINE, WRONG = (255, 255, 255), (0, 0, 0), (85, 85, 85), (255, 200, 200)
CLUE_INK, FILLED_INK, FRAME = (0, 0, 0), (0, 90, 200), (200, 200, 200)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _centred_text(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], text: str, fill, font) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (box[0] + box[2] - (right - left)) / 2 - left
    y = (box[1] + box[3] - (bottom - top)) / 2 - top
    draw.text((x, y), text, fill=fill, font=font)


def grid_image(tokens, kind: str, label=None, puzzle=None, cell_px: Optional[int] = None) -> Image.Image:
    """One grid. Sudoku: clues black, filled-in digits blue, cells differing from `label` on red."""
    cell = cell_px or CELL_PX[kind]
    grid = decode(tokens, kind)
    rows, cols = grid.shape
    image = Image.new("RGB", (max(cols, 1) * cell, max(rows, 1) * cell), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if kind == "sudoku":
        wrong = wrong_cells(grid, decode(label, kind)) if label is not None else np.zeros(grid.shape, dtype=bool)
        clues = decode(puzzle, kind) > 0 if puzzle is not None else grid > 0
        font = _font(int(cell * 0.7))
        for (r, c), d in np.ndenumerate(grid):
            box = (c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1)
            draw.rectangle(box, fill=WRONG if wrong[r, c] else BACKGROUND, outline=(190, 190, 190))
            if d != 0:
                _centred_text(draw, box, "?" if d < 0 else str(d), CLUE_INK if clues[r, c] else FILLED_INK, font)
        box_rows, box_cols = sudoku_box_shape(rows)
        for r in range(0, rows + 1, box_rows):
            y = min(r * cell, rows * cell - 1)
            draw.line([(0, y), (cols * cell - 1, y)], fill=INK, width=2 if 0 < r < rows else 1)
        for c in range(0, cols + 1, box_cols):
            x = min(c * cell, cols * cell - 1)
            draw.line([(x, 0), (x, rows * cell - 1)], fill=INK, width=2 if 0 < c < cols else 1)
    else:
        for (r, c), v in np.ndenumerate(grid):
            colour = MAZE_RGB[v] if kind == "maze" else ARC_RGB[v]
            outline = GRID_LINE if kind == "arc" and cell >= 6 else None  # lines would swamp tiny cells
            draw.rectangle((c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1), fill=colour, outline=outline)
    return image


def compose(panels: Sequence[Tuple[str, Image.Image]], slot: Optional[Tuple[int, int]] = None) -> Image.Image:
    """Titled panels left to right, each centred in a slot (default: the largest panel) so frames line up."""
    slot_w = slot[0] if slot else max(image.width for _, image in panels)
    slot_h = slot[1] if slot else max(image.height for _, image in panels)
    canvas = Image.new("RGB", (MARGIN + len(panels) * (slot_w + MARGIN), TITLE_PX + slot_h + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(TITLE_PX - 4)
    for i, (title, image) in enumerate(panels):
        x = MARGIN + i * (slot_w + MARGIN)
        _centred_text(draw, (x, 0, x + slot_w, TITLE_PX), title, INK, font)
        left, top = x + (slot_w - image.width) // 2, TITLE_PX + (slot_h - image.height) // 2
        canvas.paste(image, (left, top))
        # A frame just outside the grid, in the margin: mazes with an open border would otherwise fade out.
        draw.rectangle((left - 1, top - 1, left + image.width, top + image.height), outline=FRAME)
    return canvas


def _panels(puzzle, steps: Sequence, kind: str, label, cell_px: Optional[int]):
    if len(steps) == 0:
        raise ValueError("no supervision steps to draw; pass at least one predicted token array")
    puzzle_image = grid_image(puzzle, kind, cell_px=cell_px)
    step_images = [grid_image(s, kind, label=label, puzzle=puzzle, cell_px=cell_px) for s in steps]
    label_image = grid_image(label, kind, puzzle=puzzle, cell_px=cell_px) if label is not None else None
    images = [puzzle_image, *step_images] + ([label_image] if label_image else [])
    slot = (max(i.width for i in images), max(i.height for i in images))
    return puzzle_image, step_images, label_image, slot


def steps_image(puzzle, steps: Sequence, kind: str, label=None, cell_px: Optional[int] = None) -> Image.Image:
    """One picture: the puzzle, the answer after every step, then the label when given (e.g. for W&B)."""
    puzzle_image, step_images, label_image, slot = _panels(puzzle, steps, kind, label, cell_px)
    panels = [("puzzle", puzzle_image)] + [(f"step {i + 1}", image) for i, image in enumerate(step_images)]
    return compose(panels + ([("label", label_image)] if label_image else []), slot)


def steps_frames(puzzle, steps: Sequence, kind: str, label=None, cell_px: Optional[int] = None) -> List[Image.Image]:
    """One equal-sized frame per step: puzzle | answer at that step | label (when given)."""
    puzzle_image, step_images, label_image, slot = _panels(puzzle, steps, kind, label, cell_px)
    tail = [("label", label_image)] if label_image else []
    return [compose([("puzzle", puzzle_image), (f"step {i + 1}/{len(steps)}", image)] + tail, slot)
            for i, image in enumerate(step_images)]


def save_steps_png(path, puzzle, steps: Sequence, kind: str, label=None, cell_px: Optional[int] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps_image(puzzle, steps, kind, label, cell_px).save(path, format="PNG")
    return path


def save_steps_gif(path, puzzle, steps: Sequence, kind: str, label=None, cell_px: Optional[int] = None,
                   frame_ms: int = 600) -> Path:
    """Animated GIF, one frame per step, looping; the step titles keep Pillow from merging equal frames."""
    path = Path(path)
    frames = steps_frames(puzzle, steps, kind, label, cell_px)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return path
