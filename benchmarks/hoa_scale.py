"""Planning a Human Organ Atlas-sized prediction, simulated: virtual (z, y, x) uint16 volumes of 15 TB each
(the largest HOA organ, a brain; nothing is generated or read), cut into chunk-aligned z-slabs as
``predict --workers`` does (``inference.distributed.slab_bounds``), one task per slab.

For each size it reports: the time to plan the slabs and build their dask graph (one ``dask.delayed`` task
per slab, as ``client.submit`` per slab makes them), the graph's pickled size (what travels to the
scheduler), and the memory the scheduler of an in-process ``LocalCluster`` (no workers: no task runs)
holds for them once submitted, measured with tracemalloc. Both should grow linearly with the slabs and stay
small per slab.

    .venv/bin/python -m benchmarks hoa_scale [--volumes 1 4 16 64] [--slab_planes 128]
"""
import argparse
import pickle
import time
import tracemalloc

import numpy as np

from benchmarks.common import record, table_of

BRAIN = (12000, 25000, 25000)          # 7.5e12 voxels x 2 bytes = 15 TB
CHUNK = 128                            # the HOA stores' chunk depth


class VirtualVolume:
    """A lazily generated volume: ``read`` would synthesise planes from their coordinates (never called)."""

    def __init__(self, name, shape, spacing_um=2.5):
        self.name, self.shape, self.spacing = name, shape, (spacing_um,) * 3

    def read(self, z0, z1):
        z = np.arange(z0, z1, dtype=np.uint32)[:, None, None]
        return ((z * 2654435761) % 65521).astype(np.uint16) * np.ones((1, *self.shape[1:]), np.uint16)

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * 2


def slab_task(task):
    """What a worker would run for one slab (not run here)."""
    raise RuntimeError("planning only")


def plan(volumes, slab_planes):
    import dask

    from nnunet_vasculature.inference.distributed import slab_bounds
    t0 = time.perf_counter()
    tasks = [{"input": f"hoa:{v.name}", "level": 0, "kidney": v.name, "z0": z0, "z1": z1, "out": "out.ome.zarr"}
             for v in volumes for z0, z1 in slab_bounds(v.shape[0], slab_planes)]
    graph = dict(dask.delayed(list)([dask.delayed(slab_task, pure=False)(t) for t in tasks]).__dask_graph__())
    return tasks, graph, time.perf_counter() - t0


def scheduler_memory(tasks):
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        futures = [client.submit(slab_task, t, pure=False) for t in tasks]
        while len(cluster.scheduler.tasks) < len(tasks):
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        client.cancel(futures)
    return held, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, nargs="+", default=[1, 4, 16, 64], help="15 TB volumes per run")
    parser.add_argument("--slab_planes", type=int, default=CHUNK, help="planes per slab (a multiple of 128)")
    a = parser.parse_args()
    if a.slab_planes % CHUNK:
        parser.error(f"--slab_planes must be a multiple of the chunk depth {CHUNK}")
    rows = []
    for n in a.volumes:
        volumes = [VirtualVolume(f"brain_{i}", BRAIN) for i in range(n)]
        tasks, graph, planning = plan(volumes, a.slab_planes)
        pickled = len(pickle.dumps(graph, protocol=5))
        held, submit = scheduler_memory(tasks)
        rows.append({"volumes": n, "virtual size (TB)": sum(v.nbytes for v in volumes) / 1e12, "slabs": len(tasks),
                     "plan + graph (s)": planning, "graph tasks": len(graph), "pickled graph (MB)": pickled / 1e6,
                     "pickled bytes/slab": pickled / len(tasks), "scheduler memory (MB)": held / 1e6,
                     "scheduler bytes/slab": held / len(tasks), "submit (s)": submit})
    print(table_of(rows))
    record("hoa_scale", {"rows": rows}, a)

if __name__ == "__main__":
    main()
