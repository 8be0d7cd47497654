"""Connected components of a volume streamed in z-blocks (26-connectivity, like cc3d on the whole).

Pass 1 labels each block with cc3d, links labels that touch across block boundaries and sums
component sizes; pass 2 relabels each block the same way and keeps components of a given size.
Memory is a few blocks plus one integer per block-local component, never the whole volume.
"""
from __future__ import annotations

from typing import Callable, Iterator

import cc3d
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BlockFn = Callable[[int, int], np.ndarray]   # (z0, z1) -> boolean block


class StreamingComponents:
    def __init__(self, read_mask: BlockFn, depth: int, block: int = 64):
        self.read_mask, self.depth, self.block = read_mask, depth, block
        self.offsets: list[int] = []
        sizes, links = [], []
        offset, prev_last = 0, None
        for z0 in range(0, depth, block):
            lab, n = self._label(z0)
            self.offsets.append(offset)
            sizes.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
            glob = np.where(lab > 0, lab + offset, 0)
            if prev_last is not None:
                links.append(_touching(prev_last, glob[0]))
            prev_last = glob[-1]
            offset += n
        self.n_labels = offset
        size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        pairs = np.concatenate(links) if links else np.zeros((0, 2), np.int64)
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0] - 1, pairs[:, 1] - 1)),
                           shape=(offset, offset))
        self.n_components, self.root = connected_components(graph, directed=False)
        self.component_size = np.bincount(self.root, weights=size, minlength=self.n_components).astype(np.int64)

    def _label(self, z0: int) -> tuple[np.ndarray, int]:
        m = self.read_mask(z0, min(self.depth, z0 + self.block))
        lab, n = cc3d.connected_components(np.ascontiguousarray(m, dtype=np.uint8), connectivity=26,
                                           return_N=True)
        return lab.astype(np.int64), int(n)

    def filtered_blocks(self, min_sizes: list[int]) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Yield (z0, [mask without components smaller than s, for s in min_sizes])."""
        for z0, offset in zip(range(0, self.depth, self.block), self.offsets):
            lab, _ = self._label(z0)
            fg = lab > 0
            size = np.zeros(lab.shape, dtype=np.int64)
            size[fg] = self.component_size[self.root[lab[fg] + offset - 1]]
            yield z0, [fg & (size >= s) for s in min_sizes]


def _touching(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label pairs (a, b) of two adjacent planes that touch under 26-connectivity."""
    h, w = a.shape
    out = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            sa = a[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            sb = b[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
            both = (sa > 0) & (sb > 0)
            if both.any():
                out.append(np.stack([sa[both], sb[both]], axis=1))
    if not out:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(out), axis=0)


def remove_small_components(read_mask: BlockFn, depth: int, min_size: int,
                            block: int = 64) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (z0, block) of the mask without 26-connected components smaller than ``min_size``."""
    if min_size <= 0:
        for z0 in range(0, depth, block):
            yield z0, read_mask(z0, min(depth, z0 + block))
        return
    comps = StreamingComponents(read_mask, depth, block)
    for z0, (m,) in comps.filtered_blocks([min_size]):
        yield z0, m
