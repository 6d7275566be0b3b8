"""Spectral Relevance Analysis (SpRAy, Lapuschkin et al., Nat. Commun. 2019) on numpy arrays.

Why: the heatmaps of one class that fall into a few distinct groups show the strategies a model
uses for that class, a "Clever Hans" shortcut (a watermark, a tag in a corner) among them. The
steps: downscale and normalise the maps, link each map to its nearest neighbours, embed that
graph with the eigenvectors of its normalised Laplacian, pick the number of clusters where the
smallest eigenvalues make their largest jump (the eigengap), and run k-means in the embedding.

Scale: the affinity is a sparse k-nearest-neighbour graph (about 2 k N entries), neighbours are
searched in chunks of bounded memory and the eigenvectors come from ARPACK (``eigsh``) on that
sparse matrix, so no N x N matrix is ever formed (``benchmarks/bench_spray.py``: 20,000 maps).

scikit-learn and scipy (the ``analysis`` extra) are imported inside the functions that use them;
:func:`require_extra` says in one line how to install them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

import numpy as np

__all__ = [
    "Cluster",
    "MissingExtra",
    "SprayResult",
    "analyse",
    "choose_clusters",
    "cluster_means",
    "downscale",
    "knn_affinity",
    "normalise",
    "prepare",
    "require_extra",
    "spectral_embedding",
    "spray",
    "view_2d",
]

DEFAULT_SIZE = 32  # side of the downscaled maps: 1024 features per map
DEFAULT_NEIGHBORS = 10  # CoRelAy's default k
DEFAULT_EIGENVALUES = 10  # the eigengap is looked for among this many smallest eigenvalues
_CHUNK = 1024  # maps downscaled at a time
_WORKING_MEMORY_MB = 64  # scikit-learn's budget for one chunk of the neighbour search
INSTALL_HINT = "pip install 'lrp-cli[analysis]'"


class MissingExtra(ImportError):
    """scikit-learn or scipy is not installed; the message is one line saying how to fix it."""


def require_extra() -> None:
    """Raise :class:`MissingExtra` unless scikit-learn and scipy can be imported."""
    missing = [name for name in ("sklearn", "scipy") if find_spec(name) is None]
    if missing:
        names = " and ".join("scikit-learn" if n == "sklearn" else n for n in missing)
        raise MissingExtra(f"SpRAy needs {names}: {INSTALL_HINT}")


# --------------------------------------------------------------------------------------------
# maps -> features


def downscale(maps: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """``(N, H, W)`` maps averaged over blocks to ``(N, size, size)`` float32.

    Block means when ``size`` divides the sides (exact sum-pooling up to a factor), else an area
    (box) resample per map; maps already ``size`` x ``size`` are returned as float32.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), not {maps.shape}")
    n, height, width = maps.shape
    if (height, width) == (size, size):
        return maps
    if height % size == 0 and width % size == 0:
        blocks = maps.reshape(n, size, height // size, size, width // size)
        return blocks.mean(axis=(2, 4), dtype=np.float32)
    from PIL import Image

    out = np.empty((n, size, size), dtype=np.float32)
    for i, one in enumerate(maps):
        image = Image.fromarray(np.ascontiguousarray(one), mode="F")
        out[i] = np.asarray(image.resize((size, size), Image.Resampling.BOX))
    return out


def normalise(features: np.ndarray, absolute: bool = False) -> np.ndarray:
    """Each row divided by its total |relevance| (in place), so that only where relevance lies
    counts, not how large the logit was; ``absolute`` takes ``|R|`` first (CoRelAy's
    "absspectral"). All-zero rows stay zero."""
    if absolute:
        np.abs(features, out=features)
    total = np.abs(features).sum(axis=1, dtype=np.float64, keepdims=True)
    total[total == 0] = 1.0
    features /= total.astype(features.dtype)
    return features


def prepare(
    maps: np.ndarray | Iterable[np.ndarray], size: int = DEFAULT_SIZE, absolute: bool = False
) -> np.ndarray:
    """``(N, size * size)`` float32 features: :func:`downscale` then :func:`normalise`.

    ``maps`` is an ``(N, H, W)`` array or any iterable of ``(H, W)`` maps (files loaded one at a
    time); it is worked through ``_CHUNK`` maps at a time, so only the small features are kept.
    """
    if isinstance(maps, np.ndarray):
        if maps.ndim != 3:
            raise ValueError(f"maps must have shape (N, H, W), not {maps.shape}")
        parts = [downscale(maps[i : i + _CHUNK], size) for i in range(0, len(maps), _CHUNK)]
    else:
        parts = [downscale(np.asarray(one)[None], size) for one in maps]
    if not parts:
        raise ValueError("no maps given")
    features = np.concatenate(parts).reshape(-1, size * size)
    return normalise(features, absolute)


# --------------------------------------------------------------------------------------------
# graph, embedding, eigengap


def knn_affinity(features: np.ndarray, neighbors: int = DEFAULT_NEIGHBORS):
    """The symmetric sparse affinity ``(A + A^T) / 2`` of the k-nearest-neighbour graph.

    ``A[i, j] = 1`` when j is one of i's ``neighbors`` nearest rows (Euclidean, i itself
    excluded), so entries are 1 (mutual neighbours) or 0.5. A CSR matrix of N x N with at most
    ``2 * neighbors * N`` entries; distances are computed a chunk at a time.
    """
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    if n < 2:
        raise ValueError("at least 2 maps are needed for a neighbour graph")
    k = min(neighbors, n - 1)
    with sklearn.config_context(working_memory=_WORKING_MEMORY_MB):
        search = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(features)
        graph = search.kneighbors_graph(mode="connectivity")
    graph = graph.astype(np.float64)
    return ((graph + graph.T) * 0.5).tocsr()


def spectral_embedding(affinity, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` smallest eigenvalues of the normalised Laplacian ``I - D^-1/2 A D^-1/2``,
    ascending, and their eigenvectors ``(N, count)``.

    Each connected component of the graph is solved on its own (the Laplacian is block
    diagonal, so its spectrum is the union of the components'): Lanczos finds only one vector
    of a repeated eigenvalue, and a graph of c components has eigenvalue 0 c times. Per
    component, the largest eigenvalues of the sparse ``D^-1/2 A D^-1/2`` come from ARPACK
    (start vector drawn from ``seed``, so runs repeat bit for bit); components of at most
    ``_DENSE_COMPONENT`` maps are solved densely (a few hundred squared, never N x N).
    """
    from scipy.sparse.csgraph import connected_components

    n = affinity.shape[0]
    count = min(count, n)
    parts, component = connected_components(affinity, directed=False)
    order = np.argsort(component, kind="stable")
    starts = np.searchsorted(component[order], np.arange(parts + 1))
    values, owners = [], []
    for c in range(parts):
        index = order[starts[c] : starts[c + 1]]
        part_values, part_vectors = _smallest(affinity[index][:, index], count, seed)
        values.append(part_values)
        owners += [(index, v) for v in part_vectors.T]
    chosen = np.argsort(np.concatenate(values), kind="stable")[:count]
    eigenvalues = np.concatenate(values)[chosen]
    embedding = np.zeros((n, count))
    for column, which in enumerate(chosen):
        index, vector = owners[which]
        embedding[index, column] = vector
    largest = embedding[np.abs(embedding).argmax(axis=0), np.arange(count)]
    embedding *= np.where(largest < 0, -1.0, 1.0)  # a fixed sign: repeatable output
    return eigenvalues, embedding


_DENSE_COMPONENT = 40


def _smallest(affinity, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` smallest normalised-Laplacian eigenpairs of one connected graph."""
    from scipy import sparse
    from scipy.sparse.linalg import eigsh

    n = affinity.shape[0]
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    scale = sparse.diags(np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0))
    walk = (scale @ affinity @ scale).tocsr()
    count = min(count, n)
    if n <= max(_DENSE_COMPONENT, count + 1):
        values, vectors = np.linalg.eigh(walk.toarray())
        values, vectors = values[::-1][:count], vectors[:, ::-1][:, :count]
    else:
        start = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
        values, vectors = eigsh(walk, k=count, which="LA", v0=start, tol=1e-10)
        order = np.argsort(-values, kind="stable")
        values, vectors = values[order], vectors[:, order]
    return np.clip(1.0 - values, 0.0, 2.0), vectors


def choose_clusters(eigenvalues: Sequence[float], floor: float = 0.01) -> tuple[int, float]:
    """``(k, ratio)``: the k after which the ascending ``eigenvalues`` grow the most,
    relatively: ``k = argmax lambda_{k+1} / lambda_k``, k from 1 to ``len - 1``.

    Eigenvalues below ``floor`` x the largest given count as that floor (they are zero up to
    rounding for k disconnected groups, and lambda_1 is always 0). Relative, not absolute, gaps:
    along the spectrum eigenvalues spread out, so the largest absolute step among ten
    eigenvalues is often noise far out (measured on the Clever-Hans digits of
    ``experiments/spray_clever_hans``: with maps at 16 x 16 the largest absolute step is after
    k = 4 where the graph has exactly two components; at 32 x 32 on a class without any tag
    it is after k = 5, where relative steps pick k = 1). k = 1: no split stands out.
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    if len(values) < 2:
        return 1, 1.0
    if not values[-1] > 0:  # more disconnected groups than eigenvalues: as many as there are
        return len(values), 1.0
    values = np.maximum(values, floor * values[-1])
    ratios = values[1:] / values[:-1]
    k = int(np.argmax(ratios)) + 1
    return k, float(ratios[k - 1])


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Cluster:
    """One cluster of a class: its members nearest the centre first, and how apart it is.

    ``isolation``: the share of its members' neighbour-graph weight that stays inside the
    cluster (1: no map outside has it among its neighbours). ``atypicality`` = isolation x (1 -
    share): small and cut off, as a Clever-Hans cluster is.
    """

    index: int
    size: int
    share: float
    isolation: float
    atypicality: float
    members: np.ndarray  # indices into the maps, nearest to the centre first


@dataclass(frozen=True)
class SprayResult:
    """SpRAy on one set of maps (one class). Clusters are numbered by size, largest first."""

    labels: np.ndarray  # (N,) cluster of each map
    embedding: np.ndarray  # (N, m) row-normalised eigenvectors of the m smallest eigenvalues
    spectrum: np.ndarray  # (N, m) the eigenvectors as they are (for 2-D views)
    distances: np.ndarray  # (N,) to its cluster's mean in ``embedding``
    # k-means clustered the first k eigenvectors, rows normalised again
    eigenvalues: np.ndarray  # (m,) smallest eigenvalues of the normalised Laplacian, ascending
    k: int
    chosen_by: str  # "eigengap" or "fixed"
    eigengap: float  # lambda_{k+1} - lambda_k (of the k used)
    eigengap_k: int  # the k the eigengap alone picks
    clusters: list[Cluster]
    atypical: int | None  # the cluster with the largest atypicality (None when k = 1)
    means: np.ndarray | None = None  # (k, H, W) mean normalised map per cluster
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def separation(self) -> float | None:
        """``1 - lambda_k / lambda_{k+1}``: near 1 when the k clusters are nearly disconnected
        in the neighbour graph, near 0 when the split is no more than the spectrum's drift."""
        if self.k < 2 or self.k >= len(self.eigenvalues):
            return None
        upper = float(self.eigenvalues[self.k])
        return 1.0 - float(self.eigenvalues[self.k - 1]) / upper if upper > 0 else 0.0


def analyse(
    features: np.ndarray,
    *,
    neighbors: int = DEFAULT_NEIGHBORS,
    eigenvalues: int = DEFAULT_EIGENVALUES,
    clusters: int | None = None,
    seed: int = 0,
) -> SprayResult:
    """SpRAy on prepared ``(N, D)`` features (see :func:`prepare`): graph, embedding, eigengap,
    k-means. ``clusters`` fixes k instead of the eigengap; ``seed`` makes it repeatable."""
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    if n < 3:
        raise ValueError(f"SpRAy needs at least 3 maps, got {n}")
    if clusters is not None and not 1 <= clusters <= n:
        raise ValueError(f"the number of clusters must be between 1 and {n}, got {clusters}")
    affinity = knn_affinity(features, neighbors)
    count = min(max(eigenvalues, (clusters or 0) + 1, 2), n)
    values, vectors = spectral_embedding(affinity, count, seed)
    gap_k, _ = choose_clusters(values[:eigenvalues])
    k = clusters if clusters is not None else gap_k
    if k == 1:
        raw = np.zeros(n, dtype=np.int64)
    else:
        kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(_rows(vectors[:, :k]))
        raw = kmeans.labels_
    labels = _by_size(raw, k)
    # distances in all m coordinates: k groups that are disconnected in the graph sit on one
    # point each in the first k, which would make every member equally "typical"
    embedding = _rows(vectors)
    centres = np.zeros((k, embedding.shape[1]))
    np.add.at(centres, labels, embedding)
    centres /= np.maximum(np.bincount(labels, minlength=k), 1)[
        :, None
    ]  # k-means may leave one empty
    distances = np.linalg.norm(embedding - centres[labels], axis=1)
    found = _clusters(affinity, labels, distances, k)
    atypical = max(found, key=lambda c: c.atypicality).index if k > 1 else None
    gap = float(values[k] - values[k - 1]) if k < len(values) else 0.0
    return SprayResult(
        labels=labels,
        embedding=embedding.astype(np.float32),
        spectrum=vectors.astype(np.float32),
        distances=distances,
        eigenvalues=values,
        k=k,
        chosen_by="fixed" if clusters is not None else "eigengap",
        eigengap=gap,
        eigengap_k=gap_k,
        clusters=found,
        atypical=atypical,
        settings={"neighbors": min(neighbors, n - 1), "eigenvalues": eigenvalues, "seed": seed},
    )


def _rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (Ng, Jordan and Weiss's spectral clustering)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)[:, None]


def _by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Clusters renumbered by size, largest first (ties: the lower k-means number first)."""
    sizes = np.bincount(labels, minlength=k)
    order = np.lexsort((np.arange(k), -sizes))
    rank = np.empty_like(order)
    rank[order] = np.arange(k)
    return rank[labels]


def _clusters(affinity, labels: np.ndarray, distances: np.ndarray, k: int) -> list[Cluster]:
    coo = affinity.tocoo()
    inside = labels[coo.row] == labels[coo.col]
    within = np.bincount(labels[coo.row[inside]], coo.data[inside], minlength=k)
    total = np.bincount(labels[coo.row], coo.data, minlength=k)
    n = len(labels)
    found = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        members = members[np.argsort(distances[members], kind="stable")]
        share = len(members) / n
        isolation = float(within[c] / total[c]) if total[c] > 0 else 0.0
        found.append(Cluster(c, len(members), share, isolation, isolation * (1.0 - share), members))
    return found


def cluster_means(
    maps: np.ndarray | Iterable[np.ndarray], labels: np.ndarray, absolute: bool = False
) -> np.ndarray:
    """``(k, H, W)`` mean of each cluster's maps at full resolution, each map normalised as
    :func:`normalise` does; accumulated one map at a time (float64)."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    sums: np.ndarray | None = None
    for label, one in zip(labels, maps, strict=True):
        one = np.asarray(one, dtype=np.float64)
        if absolute:
            one = np.abs(one)
        total = np.abs(one).sum()
        if sums is None:
            sums = np.zeros((k, *one.shape))
        sums[label] += one / total if total > 0 else one
    if sums is None:
        raise ValueError("no maps given")
    counts = np.maximum(np.bincount(labels, minlength=k), 1)[:, None, None]
    return (sums / counts).astype(np.float32)


def spray(
    maps: np.ndarray,
    *,
    size: int = DEFAULT_SIZE,
    absolute: bool = False,
    neighbors: int = DEFAULT_NEIGHBORS,
    eigenvalues: int = DEFAULT_EIGENVALUES,
    clusters: int | None = None,
    seed: int = 0,
) -> SprayResult:
    """SpRAy on the ``(N, H, W)`` relevance maps of one class, with each cluster's mean map.

    ``size``: side the maps are downscaled to; ``absolute``: cluster ``|R|``; ``neighbors``: k
    of the neighbour graph; ``eigenvalues``: how many smallest eigenvalues the eigengap is
    looked for in; ``clusters``: fix the number of clusters instead.
    """
    require_extra()
    maps = np.asarray(maps)
    features = prepare(maps, size, absolute)
    result = analyse(
        features, neighbors=neighbors, eigenvalues=eigenvalues, clusters=clusters, seed=seed
    )
    means = cluster_means(maps, result.labels, absolute)
    settings = {**result.settings, "size": size, "absolute": absolute}
    return _with(result, means=means, settings=settings)


def _with(result: SprayResult, **changes: Any) -> SprayResult:
    from dataclasses import replace

    return replace(result, **changes)


def view_2d(
    result: SprayResult, method: str = "tsne", limit: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, (len(indices), 2) coordinates)``: a 2-D picture of the spectral embedding.

    ``tsne`` (perplexity 30, or less for few maps; 500 iterations) of the eigenvectors;
    ``spectral``: the first two non-trivial eigenvectors. Above ``limit`` maps a seeded random
    subset is shown, since t-SNE's cost grows with N and a picture cannot show more anyway.
    """
    n = len(result.labels)
    indices = np.arange(n)
    if n > limit:
        indices = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    data = result.embedding[indices].astype(np.float64)
    if method == "spectral" or len(indices) < 8 or data.shape[1] < 3:
        coords = np.zeros((len(indices), 2))
        part = result.spectrum[indices, 1:3]
        coords[:, : part.shape[1]] = part
        return indices, coords
    if method != "tsne":
        raise ValueError(f"unknown view {method!r}; use tsne or spectral")
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(indices) - 1) / 3))
    tsne = TSNE(2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
    coords = tsne.fit_transform(data)
    return indices, coords
