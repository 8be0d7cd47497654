"""Connected components of a volume streamed in z-blocks (26-connectivity, like cc3d on the whole).

Pass 1 labels each block with cc3d, links labels that touch across block boundaries and sums
component sizes; pass 2 keeps the components of a given size, from the labelled foreground kept by
pass 1 (or, when that would exceed its memory budget, by reading and labelling each block again).
Memory is a few blocks, one integer per block-local component and the kept foreground (bounded).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable, Iterator

import cc3d
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BlockFn = Callable[[int, int], np.ndarray]   # (z0, z1) -> boolean block


KEEP_BYTES = 384 << 20    # the labelled foreground kept between the two passes (else read and labelled again)


class StreamingComponents:
    """Sizes of the 26-connected components of a volume read block by block, then its blocks without the small ones.

    The first pass labels each block (``workers`` blocks at once, threads: the reader's decoding and cc3d run
    outside the GIL) and keeps each block's foreground voxels with their labels (sparse: vessels are a few percent
    of a volume) while they fit ``keep_bytes``; :meth:`filtered_blocks` then needs no second read.
    """

    def __init__(self, read_mask: BlockFn, depth: int, block: int = 64, workers: int = 1,
                 keep_bytes: int = KEEP_BYTES):
        self.read_mask, self.depth, self.block = read_mask, depth, block
        self.offsets: list[int] = []
        self.kept: list[tuple[tuple[int, ...], np.ndarray, np.ndarray]] | None = []
        sizes, links = [], []
        offset, prev_last, kept_bytes = 0, None, 0
        with ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
            for shape, index, local, n, first, last in (pool.map if pool else map)(self._label_sparse,
                                                                                   range(0, depth, block)):
                self.offsets.append(offset)
                sizes.append(np.bincount(local, minlength=n + 1)[1:])
                if prev_last is not None:
                    links.append(_touching(prev_last, np.where(first > 0, first.astype(np.int64) + offset, 0)))
                prev_last = np.where(last > 0, last.astype(np.int64) + offset, 0)
                offset += n
                kept_bytes += index.nbytes + local.nbytes
                if self.kept is not None and kept_bytes <= keep_bytes:
                    self.kept.append((shape, index, local))
                else:
                    self.kept = None
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
        return lab, int(n)

    def _label_sparse(self, z0: int) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
        """(block shape, flat indices of its foreground, their block-local labels, label count, first and last
        planes' labels) of the block at ``z0``."""
        lab, n = self._label(z0)
        flat = lab.reshape(-1)
        index = np.flatnonzero(flat)
        local = flat[index]
        if lab.size < 2 ** 31:
            index = index.astype(np.int32)
        return lab.shape, index, local, n, lab[0].copy(), lab[-1].copy()

    def filtered_blocks(self, min_sizes: list[int]) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Yield (z0, [mask without components smaller than s, for s in min_sizes])."""
        for i, (z0, offset) in enumerate(zip(range(0, self.depth, self.block), self.offsets)):
            if self.kept is not None:
                shape, index, local = self.kept[i]
            else:
                shape, index, local = self._label_sparse(z0)[:3]
            size = self.component_size[self.root[local.astype(np.int64) + (offset - 1)]]
            masks = []
            for s in min_sizes:
                m = np.zeros(int(np.prod(shape)), dtype=bool)
                m[index if s <= 1 else index[size >= s]] = True
                masks.append(m.reshape(shape))
            yield z0, masks


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
