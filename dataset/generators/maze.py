"""Maze generator: N x N mazes with a unique shortest S->G path, long like Maze-Hard.

Rooms sit on the even coordinates; a randomised depth-first carve gives a perfect maze with long
winding corridors, then a share of the remaining walls between rooms is knocked through so that
several routes exist. S is a random room; G is drawn among the cells at least `min_path_len` steps
away whose shortest path from S is unique (paths are counted layer by layer, capped at 2).
"""
import random
from collections import deque
from dataclasses import dataclass
from typing import List, Optional

WALL, OPEN, START, GOAL, PATH = "#", " ", "S", "G", "o"


def default_min_path_len(size: int) -> int:
    """Maze-Hard keeps 30x30 mazes whose shortest path is longer than 110 steps; scale by area."""
    return max(2, round(110 * (size / 30) ** 2))


@dataclass
class GeneratedMaze:
    maze: str       # size*size characters of "# SG"
    solution: str   # the maze with the shortest path marked 'o'
    path_len: int   # steps from S to G


def carve(size: int, rng: random.Random, loop_fraction: float) -> List[bool]:
    """Open cells (row-major) of a depth-first maze with extra openings."""
    rooms = (size + 1) // 2
    is_open = [False] * (size * size)
    seen = [[False] * rooms for _ in range(rooms)]
    r0, c0 = rng.randrange(rooms), rng.randrange(rooms)
    stack = [(r0, c0)]
    seen[r0][c0] = True
    is_open[2 * r0 * size + 2 * c0] = True
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    while stack:
        r, c = stack[-1]
        nexts = [(r + dr, c + dc) for dr, dc in steps if 0 <= r + dr < rooms and 0 <= c + dc < rooms and not seen[r + dr][c + dc]]
        if not nexts:
            stack.pop()
            continue
        nr, nc = rng.choice(nexts)
        seen[nr][nc] = True
        is_open[(r + nr) * size + (c + nc)] = True  # the wall between the rooms
        is_open[2 * nr * size + 2 * nc] = True
        stack.append((nr, nc))
    # Knock through walls that separate two rooms (odd on one axis, even on the other).
    between = [r * size + c for r in range(size) for c in range(size)
               if (r % 2) != (c % 2) and not is_open[r * size + c]
               and ((r % 2 and r + 1 < size) or (c % 2 and c + 1 < size))]
    for cell in rng.sample(between, int(loop_fraction * len(between))):
        is_open[cell] = True
    return is_open


def _neighbours(size: int, cell: int):
    r, c = divmod(cell, size)
    if r > 0:
        yield cell - size
    if r + 1 < size:
        yield cell + size
    if c > 0:
        yield cell - 1
    if c + 1 < size:
        yield cell + 1


def shortest_paths_from(size: int, is_open: List[bool], start: int):
    """BFS distances and the number of shortest paths (capped at 2) from `start`."""
    dist = [-1] * (size * size)
    count = [0] * (size * size)
    dist[start], count[start] = 0, 1
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for v in _neighbours(size, u):
            if not is_open[v]:
                continue
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
            if dist[v] == dist[u] + 1:
                count[v] = min(2, count[v] + count[u])
    return dist, count


def generate(size: int, rng: random.Random, min_path_len: Optional[int] = None, loop_fraction: float = 0.08,
             max_tries: int = 1000) -> GeneratedMaze:
    if size < 3:
        raise ValueError(f"maze size {size} is too small; use at least 3")
    min_path_len = default_min_path_len(size) if min_path_len is None else min_path_len
    for _ in range(max_tries):
        is_open = carve(size, rng, loop_fraction)
        rooms = [i for i, o in enumerate(is_open) if o]
        for _ in range(8):
            start = rng.choice(rooms)
            dist, count = shortest_paths_from(size, is_open, start)
            goals = [i for i in rooms if dist[i] >= min_path_len and count[i] == 1]
            if goals:
                break
        else:
            continue
        goal = rng.choice(goals)
        maze = [OPEN if o else WALL for o in is_open]
        maze[start], maze[goal] = START, GOAL
        solution = maze[:]
        cell = goal
        while dist[cell] > 1:  # walk back along the unique chain of decreasing distance
            cell = next(v for v in _neighbours(size, cell) if is_open[v] and dist[v] == dist[cell] - 1)
            solution[cell] = PATH
        return GeneratedMaze("".join(maze), "".join(solution), dist[goal])
    raise RuntimeError(f"no {size}x{size} maze with a unique shortest path of >= {min_path_len} steps in {max_tries} tries; lower --min-path-len")


def generate_indexed(size: int, seed: int, stream: int, index: int, min_path_len: Optional[int] = None) -> GeneratedMaze:
    return generate(size, random.Random(f"maze-{size}-{seed}-{stream}-{index}"), min_path_len)
