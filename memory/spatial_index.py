"""Uniform grid hash over the ground plane (x, z): which memory entries stand near a point.

Retrieval must not score every entry of a store that covers a large world, so the store asks this
index for the entries in the grid cells that intersect a disc around the camera and scores only those.
The cost of a lookup is bounded by the number of cells the disc touches (or, when that is larger, the
number of occupied cells) plus the entries found; it does not depend on how many entries lie elsewhere.

Heights are ignored: the index answers "within r metres horizontally" with a superset (whole cells),
and callers apply their exact 3D tests to the candidates.
"""

from __future__ import annotations

import math

import torch

Cell = tuple[int, int]
"""Integer grid coordinates (floor(x / cell_size), floor(z / cell_size))."""


class SpatialGrid:
    """Entry ids hashed by the x/z cell of their position; supports insert, remove, move, disc query.

    Ids are small non-negative ints chosen by the caller (the store uses its payload slot numbers).
    """

    def __init__(self, cell_size: float) -> None:
        if not (math.isfinite(cell_size) and cell_size > 0.0):
            raise ValueError(f"cell_size must be a positive number of metres, got {cell_size}")
        self.cell_size = float(cell_size)
        self._cells: dict[Cell, set[int]] = {}
        self._cell_of: dict[int, Cell] = {}

    def __len__(self) -> int:
        return len(self._cell_of)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._cell_of

    def cell_at(self, x: float, z: float) -> Cell:
        """The cell containing ground point (x, z)."""
        if not (math.isfinite(x) and math.isfinite(z)):
            raise ValueError(f"position must be finite, got x={x}, z={z}")
        return (math.floor(x / self.cell_size), math.floor(z / self.cell_size))

    def cell_of(self, entry_id: int) -> Cell:
        """The cell an indexed entry is in (KeyError if it is not indexed)."""
        return self._cell_of[entry_id]

    def members(self, cell: Cell) -> list[int]:
        """Ids in `cell`, ascending (empty list for an empty cell)."""
        return sorted(self._cells.get(cell, ()))

    def occupied_cells(self) -> int:
        """Number of non-empty cells."""
        return len(self._cells)

    def insert(self, entry_id: int, x: float, z: float) -> Cell:
        """Index `entry_id` at (x, z) and return its cell; an id already indexed is moved."""
        cell = self.cell_at(x, z)
        old = self._cell_of.get(entry_id)
        if old == cell:
            return cell
        if old is not None:
            self._discard(entry_id, old)
        self._cells.setdefault(cell, set()).add(entry_id)
        self._cell_of[entry_id] = cell
        return cell

    def remove(self, entry_id: int) -> Cell:
        """Remove `entry_id` and return the cell it was in (KeyError if it is not indexed)."""
        cell = self._cell_of.pop(entry_id)
        self._discard(entry_id, cell)
        return cell

    def clear(self) -> None:
        self._cells.clear()
        self._cell_of.clear()

    def _discard(self, entry_id: int, cell: Cell) -> None:
        bucket = self._cells[cell]
        bucket.discard(entry_id)
        if not bucket:
            del self._cells[cell]  # keep only occupied cells, so a wandering camera leaves no garbage

    def query(self, x: float, z: float, radius: float) -> torch.LongTensor:
        """Ids of all entries in cells that intersect the disc of `radius` around (x, z), ascending.

        A superset of the entries within `radius` horizontally (never misses one): cells are tested
        against the disc by their nearest point, entries inside a touched cell are all returned.
        """
        if not (math.isfinite(radius) and radius >= 0.0):
            raise ValueError(f"radius must be a finite non-negative number, got {radius}")
        size = self.cell_size
        lo_x, hi_x = math.floor((x - radius) / size), math.floor((x + radius) / size)
        lo_z, hi_z = math.floor((z - radius) / size), math.floor((z + radius) / size)
        r_sq = radius * radius
        found: list[int] = []

        def touches(cell: Cell) -> bool:
            # Distance from (x, z) to the nearest point of the cell's square, compared with radius.
            dx = max(cell[0] * size - x, 0.0, x - (cell[0] + 1) * size)
            dz = max(cell[1] * size - z, 0.0, z - (cell[1] + 1) * size)
            return dx * dx + dz * dz <= r_sq

        if (hi_x - lo_x + 1) * (hi_z - lo_z + 1) > len(self._cells):
            # A disc wider than the occupied area: walk occupied cells instead of empty ones.
            for cell, bucket in self._cells.items():
                if lo_x <= cell[0] <= hi_x and lo_z <= cell[1] <= hi_z and touches(cell):
                    found.extend(bucket)
        else:
            for cx in range(lo_x, hi_x + 1):
                for cz in range(lo_z, hi_z + 1):
                    bucket = self._cells.get((cx, cz))
                    if bucket and touches((cx, cz)):
                        found.extend(bucket)
        found.sort()
        return torch.tensor(found, dtype=torch.long)
