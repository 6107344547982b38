"""Sudoku generator: minimal puzzles with a unique solution, rated by the backtracks of a plain search.

Cells hold candidate bitmasks (bit d-1 = digit d). The solver propagates naked + hidden singles and
branches on the cell with the fewest candidates. The difficulty rating is plainer: the number of dead
ends met before the first solution by a search that propagates naked singles only, branches on the
cell with the fewest candidates and tries digits in increasing order (0 = no wrong guess).
"""
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

BOX_SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # size -> (rows, cols) of a box


class Geometry:
    """Units and peers of an n x n board with boxes of box_rows x box_cols cells."""

    def __init__(self, size: int):
        if size not in BOX_SHAPES:
            raise ValueError(f"Sudoku size {size} is not supported; use one of {sorted(BOX_SHAPES)}")
        self.size = n = size
        self.box_rows, self.box_cols = br, bc = BOX_SHAPES[size]
        self.cells = n * n
        self.full = (1 << n) - 1
        rows = [tuple(r * n + c for c in range(n)) for r in range(n)]
        cols = [tuple(r * n + c for r in range(n)) for c in range(n)]
        boxes = [tuple((r0 + r) * n + c0 + c for r in range(br) for c in range(bc))
                 for r0 in range(0, n, br) for c0 in range(0, n, bc)]
        self.units = rows + cols + boxes
        self.peers = [tuple(sorted({p for u in self.units if i in u for p in u} - {i})) for i in range(self.cells)]
        # The indices into `units` of each cell's row, column and box.
        self.units_of = [tuple(k for k, u in enumerate(self.units) if i in u) for i in range(self.cells)]
        self.unit_bits = [sum(1 << k for k in ks) for ks in self.units_of]  # the same as a bitmask over units
        self.all_units = (1 << len(self.units)) - 1


_GEOMETRIES = {}


def geometry(size: int) -> Geometry:
    if size not in _GEOMETRIES:
        _GEOMETRIES[size] = Geometry(size)
    return _GEOMETRIES[size]


def _propagate(g: Geometry, cand: List[int], queue: List[int], hidden: bool = True, dirty: Optional[int] = None) -> bool:
    """Apply naked (and, if `hidden`, hidden) singles until nothing changes; False on a contradiction.

    `dirty` is a bitmask over `g.units` of the units to scan for hidden singles (default all). A caller that
    changed one cell of a state already at this fixpoint passes that cell's units: a unit none of whose cells
    changed since still holds every digit and no hidden single, so rescanning all 27 units each round (the
    bulk of the solver's time) is not needed; units are marked again as the eliminations touch them."""
    peers, units, full, unit_bits = g.peers, g.units, g.full, g.unit_bits
    if dirty is None:
        dirty = g.all_units
    while True:
        while queue:
            i = queue.pop()
            b = cand[i]
            for p in peers[i]:
                m = cand[p]
                if m & b:
                    m ^= b
                    if not m:
                        return False
                    cand[p] = m
                    dirty |= unit_bits[p]
                    if not m & (m - 1):
                        queue.append(p)
        if not hidden:
            return True
        scan, dirty = dirty, 0
        while scan:
            low = scan & -scan
            scan ^= low
            unit = units[low.bit_length() - 1]
            once = twice = 0
            for c in unit:
                m = cand[c]
                twice |= once & m
                once |= m
            if once != full:
                return False
            only = once & ~twice
            if only:
                for c in unit:
                    m = cand[c]
                    h = m & only
                    if h and h != m:
                        if h & (h - 1):
                            return False  # one cell is the only place for two digits
                        cand[c] = h
                        dirty |= unit_bits[c]
                        queue.append(c)
        if not queue:
            return True


def _initial(g: Geometry, puzzle: Sequence[int]) -> Optional[Tuple[List[int], List[int]]]:
    """Candidates straight from the givens, and the queue of empty cells left with one candidate (their digit
    still has to leave their peers); None when two givens clash or an empty cell has no candidate.
    Reading the givens' digits off per-unit masks costs one pass over the board, where queueing every given
    and clearing its digit from 20 peers (the same fixpoint) cost about ten times as much."""
    used = [0] * len(g.units)
    for i, v in enumerate(puzzle):
        if v:
            bit = 1 << (v - 1)
            for u in g.units_of[i]:
                if used[u] & bit:
                    return None
                used[u] |= bit
    cand, queue = [], []
    for i, v in enumerate(puzzle):
        if v:
            cand.append(1 << (v - 1))
        else:
            r, c, b = g.units_of[i]
            m = g.full & ~(used[r] | used[c] | used[b])
            if not m:
                return None
            cand.append(m)
            if not m & (m - 1):
                queue.append(i)
    return cand, queue


def _decode(cand: List[int]) -> List[int]:
    return [m.bit_length() for m in cand]


class _Search:
    def __init__(self, g: Geometry, limit: int, hidden: bool = True):
        self.g, self.limit, self.hidden = g, limit, hidden
        self.solutions: List[List[int]] = []
        self.backtracks = 0

    def run(self, cand: List[int]) -> None:
        best, best_count = -1, 99
        for i, m in enumerate(cand):
            if m & (m - 1):
                k = m.bit_count()
                if k < best_count:
                    best, best_count = i, k
                    if k == 2:
                        break
        if best < 0:
            self.solutions.append(_decode(cand))
            return
        m = cand[best]
        while m:
            b = m & -m
            m ^= b
            child = cand[:]
            child[best] = b
            if _propagate(self.g, child, [best], self.hidden, self.g.unit_bits[best]):
                self.run(child)
                if len(self.solutions) >= self.limit:
                    return
            else:
                self.backtracks += 1


def solve(puzzle: Sequence[int], size: int = 9, limit: int = 1, hidden: bool = True) -> Tuple[List[List[int]], int]:
    """Up to `limit` solutions of a flat puzzle (digits, 0 = blank) and the backtracks spent."""
    g = geometry(size)
    state = _initial(g, puzzle)
    search = _Search(g, limit, hidden)
    if state is not None and _propagate(g, *state, hidden):
        search.run(state[0])
    return search.solutions, search.backtracks


def count_solutions(puzzle: Sequence[int], size: int = 9, limit: int = 2) -> int:
    return len(solve(puzzle, size, limit)[0])


def solvable_by_singles(puzzle: Sequence[int], size: int = 9) -> bool:
    g = geometry(size)
    state = _initial(g, puzzle)
    return state is not None and _propagate(g, *state) and all(not m & (m - 1) for m in state[0])


def rating(puzzle: Sequence[int], size: int = 9) -> int:
    """Dead ends of a plain search (naked singles only, fewest-candidates cell, digits in order)."""
    return solve(puzzle, size, limit=1, hidden=False)[1]


def random_solution(size: int, rng: random.Random) -> List[int]:
    """A uniformly seeded random full grid: search with shuffled digit order on a random first row."""
    g = geometry(size)
    first = list(range(1, size + 1))
    rng.shuffle(first)
    cand = [g.full] * g.cells
    queue = []
    for c, d in enumerate(first):
        cand[c] = 1 << (d - 1)
        queue.append(c)
    _propagate(g, cand, queue)

    def fill(cand):
        open_cells = [i for i, m in enumerate(cand) if m & (m - 1)]
        if not open_cells:
            return cand
        i = min(open_cells, key=lambda j: (cand[j].bit_count(), rng.random()))
        bits = [b for b in (1 << d for d in range(size)) if cand[i] & b]
        rng.shuffle(bits)
        for b in bits:
            child = cand[:]
            child[i] = b
            if _propagate(g, child, [i], dirty=g.unit_bits[i]):
                done = fill(child)
                if done:
                    return done
        return None

    return _decode(fill(cand))


def _forced(g: Geometry, cand: List[int], cell: int, bit: int) -> bool:
    """The digit `bit` is the only candidate of `cell`, or `cell` is its only place in one of its units."""
    if cand[cell] == bit:
        return True
    units = g.units
    return any(not any(cand[c] & bit for c in units[u] if c != cell) for u in g.units_of[cell])


def _removal_keeps_unique(g: Geometry, puzzle: List[int], cell: int, value: int) -> bool:
    """The puzzle without `cell` (already blanked by the caller; it had one solution with `value` there) still has
    one solution iff none puts another digit there. Most early removals are settled by the givens alone: when
    they force `value` into `cell` (a naked or hidden single) no search is needed; that is about half the calls."""
    cand, queue = _initial(g, puzzle)  # never None: the givens are part of a solution
    bit = 1 << (value - 1)
    if _forced(g, cand, cell, bit):
        return True
    cand[cell] &= ~bit
    if not cand[cell] & (cand[cell] - 1):
        queue.append(cell)
    search = _Search(g, 1)
    if _propagate(g, cand, queue):
        search.run(cand)
    return not search.solutions


@dataclass
class GeneratedSudoku:
    puzzle: List[int]    # flat, 0 = blank
    solution: List[int]
    rating: int          # backtracks of the plain search
    singles: bool        # solvable by naked + hidden singles alone

    @property
    def clues(self) -> int:
        return sum(1 for v in self.puzzle if v)


def generate(size: int, rng: random.Random, min_rating: int = 0, max_tries: int = 10000) -> GeneratedSudoku:
    """A minimal puzzle: start from a random full grid and drop clues in random order whenever
    the solution stays unique. One pass suffices: a clue that could not go stays necessary, since
    dropping others only adds solutions."""
    g = geometry(size)
    for _ in range(max_tries):
        solution = random_solution(size, rng)
        puzzle = solution[:]
        order = list(range(g.cells))
        rng.shuffle(order)
        for cell in order:
            value = puzzle[cell]
            puzzle[cell] = 0
            if not _removal_keeps_unique(g, puzzle, cell, value):
                puzzle[cell] = value
        r = rating(puzzle, size)
        if r >= min_rating:
            return GeneratedSudoku(puzzle, solution, r, solvable_by_singles(puzzle, size))
    raise RuntimeError(f"no {size}x{size} puzzle with rating >= {min_rating} in {max_tries} tries; lower --min-difficulty")


def generate_indexed(args: Tuple[int, int, int, int, int]) -> GeneratedSudoku:
    """Picklable entry point for worker pools; (seed, stream, index) fixes the puzzle."""
    size, seed, stream, index, min_rating = args
    return generate(size, random.Random(f"sudoku-{size}-{seed}-{stream}-{index}"), min_rating)


def is_minimal(puzzle: Sequence[int], size: int = 9) -> bool:
    puzzle = list(puzzle)
    for i, v in enumerate(puzzle):
        if v:
            puzzle[i] = 0
            if count_solutions(puzzle, size) < 2:
                return False
            puzzle[i] = v
    return True
