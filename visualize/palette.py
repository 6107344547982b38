"""Colours: the standard ARC palette (colours 0-9) and its nearest xterm-256 codes for the terminal."""
from typing import Sequence, Tuple

RGB = Tuple[int, int, int]

ARC_RGB: Tuple[RGB, ...] = (
    (0, 0, 0), (0, 116, 217), (255, 65, 54), (46, 204, 64), (255, 220, 0),
    (170, 170, 170), (240, 18, 190), (255, 133, 27), (127, 219, 255), (135, 12, 37))
MAZE_RGB = {"#": (60, 60, 60), " ": (255, 255, 255), "S": (46, 204, 64), "G": (255, 65, 54), "o": (0, 116, 217), "?": (240, 18, 190)}

_CUBE_LEVELS = (0, 95, 135, 175, 215, 255)  # xterm's 6x6x6 colour cube, codes 16..231


def _distance(a: Sequence[int], b: Sequence[int]) -> int:
    return sum((x - y) ** 2 for x, y in zip(a, b))


def ansi256(rgb: RGB) -> int:
    """Nearest xterm-256 code among the colour cube and the grey ramp (232..255: 8, 18, ..., 238)."""
    nearest = [min(range(6), key=lambda i: abs(_CUBE_LEVELS[i] - v)) for v in rgb]
    cube_code = 16 + 36 * nearest[0] + 6 * nearest[1] + nearest[2]
    cube_rgb = tuple(_CUBE_LEVELS[i] for i in nearest)
    grey_index = min(23, max(0, round((sum(rgb) / 3 - 8) / 10)))
    grey = 8 + 10 * grey_index
    return 232 + grey_index if _distance(rgb, (grey,) * 3) < _distance(rgb, cube_rgb) else cube_code


ARC_ANSI = tuple(ansi256(rgb) for rgb in ARC_RGB)
