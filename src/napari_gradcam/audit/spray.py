"""Strategies (SpRAy, Lapuschkin et al. 2019): a class's maps clustered on a sparse nearest-neighbour
affinity, the number of clusters from the eigengap of the normalised graph Laplacian, a 2-D spectral
embedding for the picture, and per image how far its evidence lies from the class's main strategy.

The pipeline follows CoRelAy's processors (pooling -> affinity -> embedding -> clustering): maps pooled
to 16 x 16 and reduced to at most :data:`PCA_DIMS` principal components (scikit-learn's randomized PCA),
scikit-learn's ``kneighbors_graph`` (no N x N dense matrix), the normalised Laplacian's leading
eigenvectors (per connected component: dense when small, scipy's sparse Lanczos solver when large), and
k-means on their normalised rows (Ng, Jordan and Weiss 2001: what ``SpectralClustering`` does, without
computing the same eigenvectors a second time).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

#: Classes with fewer maps are one cluster (too few neighbours to speak of strategies).
MIN_TO_CLUSTER = 12
#: Features for the neighbour search: principal components of the pooled maps.
PCA_DIMS = 32
#: Graph components up to this many nodes are decomposed densely, larger ones with Lanczos.
DENSE_UP_TO = 1500


@dataclass
class Strategies:
    """The clusters of one class's maps.

    labels : (n,) int64 cluster of each map, 0..k-1, the largest cluster 0
    embedding : (n, 2) float32 spectral coordinates (:func:`regularised_embedding`)
    eigenvalues : (m,) float64 smallest eigenvalues of the normalised Laplacian (ascending)
    atypical : (n,) float32 distance of each map from the main cluster's mean, in units of the main
        cluster's median distance (1: a typical member of the main strategy)
    """

    labels: np.ndarray
    embedding: np.ndarray
    eigenvalues: np.ndarray
    atypical: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def pooled(maps: np.ndarray, side: int = 16) -> np.ndarray:
    """(n, G, G) maps -> (n, side*side) float32 features: block sums on a ``side`` grid (G a multiple of it)."""
    n, g = maps.shape[0], maps.shape[-1]
    k = max(1, g // side)
    s = g // k
    return maps[:, : s * k, : s * k].reshape(n, s, k, s, k).sum(axis=(2, 4)).reshape(n, -1).astype(np.float32)


def knn_affinity(features: np.ndarray, n_neighbors: int):
    """Symmetric sparse (n, n) 0/1 affinity: i and j are linked when either is among the other's
    ``n_neighbors`` nearest (Euclidean), and the distance graph it comes from."""
    from sklearn.neighbors import kneighbors_graph

    dist = kneighbors_graph(features, n_neighbors, mode="distance", include_self=False)
    conn = dist.copy()
    conn.data[:] = 1.0
    return ((conn + conn.T) > 0).astype(np.float64), dist


def _component_spectrum(norm, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` largest eigenpairs of one connected component's normalised affinity (dense when small)."""
    from scipy.sparse.linalg import eigsh

    n = norm.shape[0]
    m = min(m, n)
    if n <= DENSE_UP_TO:
        vals, vecs = np.linalg.eigh(norm.toarray())
        return vals[::-1][:m], vecs[:, ::-1][:, :m]
    v0 = np.random.default_rng(seed).uniform(-1, 1, n)
    vals, vecs = eigsh(norm, k=m, which="LA", v0=v0, tol=1e-8, maxiter=max(1000, 20 * n))
    order = np.argsort(-vals)
    return vals[order], vecs[:, order]


def laplacian_spectrum(affinity, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` smallest eigenvalues (ascending) of the normalised Laplacian ``I - D^-1/2 A D^-1/2``
    and their eigenvectors (n, m).

    Each connected component's spectrum is computed on its own (dense up to :data:`DENSE_UP_TO` nodes,
    else Lanczos on the largest eigenvalues of the normalised affinity) and the spectra merged: a Krylov
    solver started from one vector finds a repeated eigenvalue once, and a graph of c components has
    the eigenvalue 0 c times.
    """
    from scipy.sparse import csr_matrix, diags
    from scipy.sparse.csgraph import connected_components

    affinity = csr_matrix(affinity)
    deg = np.asarray(affinity.sum(axis=1)).ravel()
    d = diags(1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)))
    norm = (d @ affinity @ d).tocsr()
    n = affinity.shape[0]
    m = min(m, n)
    _, comp = connected_components(affinity, directed=False)
    vals, vecs = [], []
    for c in np.unique(comp):
        rows = np.nonzero(comp == c)[0]
        cv, cx = _component_spectrum(norm[rows][:, rows], m, seed)
        full = np.zeros((n, len(cv)))
        full[rows] = cx
        vals.append(cv)
        vecs.append(full)
    vals, vecs = np.concatenate(vals), np.concatenate(vecs, axis=1)
    order = np.argsort(-vals, kind="stable")[:m]
    return np.clip(1.0 - vals[order], 0.0, 2.0), vecs[:, order]


def eigengap_clusters(eigenvalues: np.ndarray, max_clusters: int, clear: float = 0.75) -> int:
    """The number of clusters from the eigengap, relative to the eigenvalues' level: the largest k in
    1..max_clusters with ``(lambda_{k+1} - lambda_k) / lambda_{k+1} >= clear`` (the first k eigenvalues at
    least four times below the next one: k groups that are nearly disconnected), else 1.

    The absolute gap grows with the index in a k-nearest-neighbour graph's spectrum (the clusters' own
    eigenvalues spread out), so its largest value often lies deep in the spectrum; the relative gap is 1
    for every set of exactly disconnected groups and falls off quickly inside a group."""
    k_max = min(max_clusters, len(eigenvalues) - 1)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    best = 1
    for k in range(1, k_max + 1):
        nxt = lam[k]
        if nxt > 1e-12 and (nxt - lam[k - 1]) / nxt >= clear:
            best = k
    return best


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids ordered by size (0 the largest; ties by first member)."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], first[i]))
    remap = {int(ids[i]): r for r, i in enumerate(order)}
    return np.array([remap[int(v)] for v in labels], dtype=np.int64)


def atypical_scores(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n,) distance of each feature row from the mean of cluster 0, over the median distance of its members."""
    centre = features[labels == 0].mean(axis=0)
    dist = np.linalg.norm(features - centre, axis=1)
    scale = float(np.median(dist[labels == 0])) or float(dist.mean()) or 1.0
    return (dist / scale).astype(np.float32)


def find_strategies(maps: np.ndarray, max_clusters: int = 8, n_neighbors: int | None = None,
                    seed: int = 0) -> Strategies:
    """Cluster one class's (n, G, G) sum-normalised maps (see the module docstring).

    ``n_neighbors`` defaults to ``round(sqrt(n))`` between 10 and 30.  Classes with fewer than
    :data:`MIN_TO_CLUSTER` maps are one cluster.
    """
    n = len(maps)
    features = pooled(maps)
    if n < MIN_TO_CLUSTER:
        labels = np.zeros(n, np.int64)
        return Strategies(labels, np.zeros((n, 2), np.float32), np.zeros(0), atypical_scores(features, labels)
                          if n else np.zeros(0, np.float32))
    k_nn = int(n_neighbors or min(30, max(10, round(np.sqrt(n)))))
    k_nn = min(k_nn, n - 1)
    affinity, _ = knn_affinity(reduced(features, seed), k_nn)
    vals, vecs = laplacian_spectrum(affinity, max_clusters + 1, seed)
    k = eigengap_clusters(vals, max_clusters)
    labels = np.zeros(n, np.int64) if k == 1 else _relabel_by_size(spectral_kmeans(vecs[:, :k], k, seed))
    embedding = regularised_embedding(affinity, seed)
    return Strategies(labels, embedding, vals, atypical_scores(features, labels))


def reduced(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """The features' first :data:`PCA_DIMS` principal components (all of them when there are fewer)."""
    if features.shape[1] <= PCA_DIMS or len(features) <= PCA_DIMS:
        return features
    from sklearn.decomposition import PCA

    return PCA(PCA_DIMS, svd_solver="randomized", random_state=seed).fit_transform(features).astype(np.float32)


def spectral_kmeans(vecs: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(n,) cluster of each row of the (n, k) leading eigenvectors: k-means on the rows scaled to unit length."""
    from sklearn.cluster import KMeans

    rows = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct rows than clusters in degenerate cases
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(rows)


def regularised_embedding(affinity, seed: int = 0) -> np.ndarray:
    """(n, 2) coordinates for the picture: the two leading non-trivial eigenvectors of the regularised
    normalised affinity ``D_t^-1/2 (A + t/n 11^T) D_t^-1/2`` (t the mean degree, ``D_t = D + t``; Qin and
    Rohe 2013), scaled by ``D_t^-1/2``.  The rank-one term joins separate components, so each cluster
    spreads out instead of collapsing onto its indicator vector; it is applied implicitly (no N x N matrix)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import LinearOperator, eigsh

    a = csr_matrix(affinity)
    n = a.shape[0]
    deg = np.asarray(a.sum(axis=1)).ravel()
    tau = float(deg.mean())
    s = 1.0 / np.sqrt(deg + tau)
    if n <= DENSE_UP_TO:
        vals, vecs = np.linalg.eigh(s[:, None] * (a.toarray() + tau / n) * s[None, :])
    else:
        op = LinearOperator((n, n), dtype=np.float64,
                            matvec=lambda x: s * (a @ (s * np.ravel(x))) + tau / n * s * float(s @ np.ravel(x)))
        vals, vecs = eigsh(op, k=3, which="LA", v0=np.random.default_rng(seed).uniform(-1, 1, n), tol=1e-6)
    order = np.argsort(-vals)
    coords = (vecs[:, order[1:3]] * s[:, None]) if n > 2 else np.zeros((n, 2))
    for j in range(coords.shape[1]):  # a fixed sign: the largest entry positive
        if coords[np.argmax(np.abs(coords[:, j])), j] < 0:
            coords[:, j] *= -1
    return coords.astype(np.float32)
