"""Time and peak memory of SpRAy (``lrp_cli.analysis.spray``) on many synthetic maps of one class.

The maps are (N, 64, 64) float32: a few "strategies" (Gaussian blobs of relevance at different
places, one of them a small tag in a corner held by 5 % of the maps), each map one strategy
plus noise. Reported per stage: downscale and normalise, neighbour graph, embedding, k-means
(``analyse``), the per-cluster mean maps, and the report's 2-D t-SNE view (of at most 2000
maps); then the process's peak resident memory and how well the planted groups came back
(adjusted Rand index). Run in a fresh process so that the peak is this run's own:

    python benchmarks/bench_spray.py --maps 20000 --threads 2 --json benchmarks/results/spray.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=20000)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--noise", type=float, default=1.0, help="std of the per-pixel noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)  # before numpy loads its BLAS

    import numpy as np
    import sklearn
    from scipy.sparse.csgraph import connected_components
    from sklearn.metrics import adjusted_rand_score

    from lrp_cli.analysis import spray

    maps, groups = synthetic_maps(args.maps, args.side, args.seed, args.noise)
    input_mib = maps.nbytes / 2**20
    stages = {}
    start = time.perf_counter()
    features = spray.prepare(maps)
    stages["prepare"] = time.perf_counter() - start
    start = time.perf_counter()
    result = spray.analyse(features, seed=args.seed)
    graph_components = connected_components(spray.knn_affinity(features), directed=False)[0]
    stages["analyse (graph, embedding, eigengap, k-means)"] = time.perf_counter() - start
    start = time.perf_counter()
    means = spray.cluster_means(maps, result.labels)
    stages["cluster means"] = time.perf_counter() - start
    total = sum(stages.values())
    start = time.perf_counter()
    spray.view_2d(result, seed=args.seed)
    stages["2-D view (t-SNE of 2000)"] = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "maps": args.maps,
        "side": args.side,
        "threads": args.threads,
        "noise": args.noise,
        "input_mib": round(input_mib, 1),
        "seconds": {k: round(v, 2) for k, v in stages.items()},
        "seconds_spray": round(total, 2),
        "peak_rss_mib": round(peak_mib, 1),
        "graph_components": int(graph_components),
        "k": result.k,
        "cluster_sizes": [c.size for c in result.clusters],
        "planted_sizes": sorted(np.bincount(groups).tolist(), reverse=True),
        "adjusted_rand_index": round(float(adjusted_rand_score(groups, result.labels)), 4),
        "eigenvalues": [round(float(v), 5) for v in result.eigenvalues],
        "means_shape": list(means.shape),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1)
            handle.write("\n")
    return 0


def synthetic_maps(n: int, side: int, seed: int, noise: float = 1.0):
    """(n, side, side) float32 maps of 5 strategies (sizes 40/25/20/10/5 %), and their group."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    centres = [(0.5, 0.5, 0.2), (0.3, 0.7, 0.12), (0.7, 0.3, 0.12), (0.75, 0.75, 0.15)]
    prototypes = [np.exp(-((yy - a) ** 2 + (xx - b) ** 2) / (2 * s * s)) for a, b, s in centres]
    tag = np.zeros((side, side))
    tag[1 : side // 10, 1 : side // 10] = 3.0
    prototypes.append(tag + prototypes[0])  # the shortcut: a corner tag beside the object
    shares = np.array([0.40, 0.25, 0.20, 0.10, 0.05])
    groups = rng.choice(len(shares), n, p=shares)
    maps = np.empty((n, side, side), dtype=np.float32)
    for start in range(0, n, 1000):  # noise a chunk at a time: no float64 copy of all maps
        part = slice(start, min(start + 1000, n))
        pixels = rng.normal(0.0, noise, (part.stop - part.start, side, side))
        scale = rng.uniform(0.5, 2.0, (part.stop - part.start, 1, 1))
        maps[part] = scale * (np.stack([prototypes[g] for g in groups[part]]) + pixels)
    return maps, groups


if __name__ == "__main__":
    sys.exit(main())
