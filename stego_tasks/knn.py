"""Stage `knn`: the top-k neighbour graph of the training crops' pooled features.

The math (pooling, exact faiss top-k, sampling positives) lives in
:mod:`stego_tasks.method.neighbours`; this module reads the store and writes the graph.
"""

from __future__ import annotations

from pathlib import Path

from stego_tasks.method.neighbours import knn_graph


def knn(store_path: Path, out_path: Path, k: int) -> dict[str, int]:
    """Stage `knn`: top-k neighbours of every training crop, from the stored pooled features.

    Args:
        store_path: features Zarr store (its `train/pooled` [M, C]).
        out_path: Zarr store to write, holding `train` int64 [M, k'] (k' = min(k, M-1)).
        k: neighbours to keep (the published positives come from the 7 nearest).

    Returns:
        {"rows": M, "k": k'}.
    """
    import zarr

    from stego_tasks.data.feature_store import read_split
    from stego_tasks.data.store_integrity import record_store_digests
    from stego_tasks.runtime import atomic

    pooled = read_split(store_path, "train", arrays=["pooled"])["pooled"][:]
    graph = knn_graph(pooled, k)
    with atomic.atomic_path(out_path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.create_array("train", data=graph, chunks=(min(len(graph), 65536), graph.shape[1]))
        group.attrs["k"] = int(graph.shape[1])
        record_store_digests(group)
    return {"rows": int(graph.shape[0]), "k": int(graph.shape[1])}
