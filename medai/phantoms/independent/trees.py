"""Airway and vessel trees: space colonisation with random-walk jitter, Murray radii, random-walk twigs.

The visible tree of each lobe is grown by *space colonisation*: attraction
points are scattered through the lobe; every point pulls on its nearest tree
node within an influence radius, each pulled node grows one step toward the
mean direction of its points (plus a random-walk jitter that curves the
branches), and points are consumed when a node comes close. Branching
emerges where one node's points lie in different directions. Growth also
drifts away from the lobe's hilar entry, so vessels fan out, and the node
positions are relaxed afterwards (no zig-zags). Radii come from the leaves
up by a Murray-like law (``r**2.7`` of a parent is the sum over its
children), scaled so the lobar stem has its anatomical size, so vessels
taper from the hilum to the periphery.

Beyond the leaves, sub-millimetre *twigs* grow as curved random walks that
split by Murray's law (:mod:`~medai.phantoms.independent.twigs`). They carry
the fine texture of normal lung.

Airways grow first from the main bronchi; pulmonary arteries start as a copy
of the airway tree shifted beside it (the bronchovascular bundle) and keep
colonising beyond the smallest airways; pulmonary veins colonise the same
lobes from the left atrium's veins with their own attraction points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from medai.phantoms.independent.lungmap import LungMap, Segments
from medai.phantoms.independent.twigs import Front, Grower, perpendicular, unit

__all__ = ["grow_lungs"]


def _entries(lungs: LungMap, root: np.ndarray, lobes: tuple[int, ...]) -> list[tuple[int, np.ndarray, float]]:
    """Lobes fed from ``root``: (lobe, entry point inside the lobe near the root, share of their volume)."""
    out = []
    vols = []
    for lobe in lobes:
        xyz = lungs.voxels(lobe, 4.0)
        if not len(xyz):
            continue
        dist = np.linalg.norm(xyz - root, axis=1)
        entry = xyz[np.argsort(dist)[: max(1, len(dist) // 50)]].mean(axis=0)
        out.append((lobe, entry + 0.1 * (xyz.mean(axis=0) - entry)))
        vols.append(len(xyz))
    total = float(sum(vols)) or 1.0
    return [(lobe, e, v / total) for (lobe, e), v in zip(out, vols, strict=True)]


@dataclass
class _Tree:
    """Nodes of a colonised tree: positions, parent index (-1 for roots, parents before children), lobe."""

    nodes: np.ndarray
    parent: np.ndarray
    lobe: np.ndarray

    def leaves(self) -> np.ndarray:
        """Number of leaves below each node (a leaf counts itself)."""
        n = len(self.parent)
        count = np.zeros(n)
        has_child = np.zeros(n, dtype=bool)
        has_child[self.parent[self.parent >= 0]] = True
        count[~has_child] = 1.0
        for i in range(n - 1, -1, -1):  # children come after their parents
            if self.parent[i] >= 0:
                count[self.parent[i]] += count[i]
        return count

    def radii(self, root_radius: dict[int, float]) -> np.ndarray:
        """Radii from the leaves up: ``r ~ leaves**(1/2.7)`` (Murray-like), scaled per lobe by its stem's radius."""
        leaves = self.leaves()
        r = np.zeros(len(leaves))
        roots = np.flatnonzero(self.parent < 0)
        for lobe, radius in root_radius.items():
            mine = self.lobe == lobe
            top = roots[self.lobe[roots] == lobe]
            total = float(leaves[top].sum()) if len(top) else 1.0
            r[mine] = radius * (leaves[mine] / max(total, 1.0)) ** (1.0 / 2.7)
        return r

    def smoothed(self, iterations: int = 3) -> _Tree:
        """The tree with its zig-zags relaxed: every inner node moves halfway to the mean of its neighbours."""
        nodes = self.nodes.copy()
        has_parent = self.parent >= 0
        child = np.flatnonzero(has_parent)
        n_children = np.bincount(self.parent[child], minlength=len(nodes))
        inner = has_parent & (n_children > 0)
        for _ in range(iterations):
            child_sum = np.zeros_like(nodes)
            np.add.at(child_sum, self.parent[child], nodes[child])
            mean_child = child_sum / np.maximum(n_children, 1)[:, None]
            target = 0.5 * (nodes[np.maximum(self.parent, 0)] + mean_child)
            nodes[inner] = 0.5 * nodes[inner] + 0.5 * target[inner]
        return _Tree(nodes, self.parent, self.lobe)

    def segments(self, radii: np.ndarray) -> Segments:
        child = np.flatnonzero(self.parent >= 0)
        par = self.parent[child]
        return Segments(self.nodes[par], self.nodes[child], radii[child], radii[child])


def _colonise(
    lungs: LungMap,
    seeds: _Tree,
    counts: dict[int, int],
    rng: np.random.Generator,
    *,
    step: float = 3.0,
    influence: float = 60.0,
    kill: float = 5.0,
    jitter: float = 0.25,
    radial: float = 0.35,
    max_iterations: int = 90,
) -> _Tree:
    """Grow ``seeds`` by space colonisation toward ``counts[lobe]`` attraction points per lobe.

    Each growth step follows the mean pull of the node's attraction points, plus ``radial`` times the
    direction away from its lobe's first node (vessels fan out from the hilum) and a random-walk jitter.
    """
    pts, lobes = [], []
    for lobe, count in counts.items():
        inside = lungs.voxels(lobe, 3.0)
        if not len(inside) or count <= 0:
            continue
        xyz = inside[rng.integers(0, len(inside), count)]
        pts.append(xyz + rng.uniform(-0.5, 0.5, xyz.shape) * lungs.spacing)
        lobes.append(np.full(count, lobe))
    if not pts:
        return seeds
    far = 1e5  # lobes live far apart in the fourth coordinate: no pull across a fissure

    def lift(xyz: np.ndarray, lobe: np.ndarray) -> np.ndarray:
        return np.concatenate([xyz, (lobe * far)[:, None]], axis=1)

    points = lift(np.concatenate(pts), np.concatenate(lobes))
    hilum = np.zeros((8, 3))
    roots = np.flatnonzero(seeds.parent < 0)
    hilum[seeds.lobe[roots]] = seeds.nodes[roots]
    nodes = [seeds.nodes]
    parent = [seeds.parent]
    node_lobe = [seeds.lobe]
    n_nodes = len(seeds.nodes)
    best_d = np.full(len(points), np.inf)
    best_i = np.zeros(len(points), dtype=np.intp)
    alive = np.ones(len(points), dtype=bool)
    new_xyz, new_lobe, new_first = seeds.nodes, seeds.lobe, 0
    all_xyz = seeds.nodes
    all_lobe = seeds.lobe
    for _ in range(max_iterations):
        if len(new_xyz):
            tree = cKDTree(lift(new_xyz, new_lobe))
            d, i = tree.query(points, distance_upper_bound=influence)
            closer = d < best_d
            best_d[closer] = d[closer]
            best_i[closer] = i[closer] + new_first
            gone, _ = tree.query(points, distance_upper_bound=kill)
            alive &= ~np.isfinite(gone)
        pulled = alive & np.isfinite(best_d)
        if not pulled.any():
            break
        who = best_i[pulled]
        pull = points[pulled, :3] - all_xyz[who]
        pull /= np.maximum(np.linalg.norm(pull, axis=1, keepdims=True), 1e-9)
        total = np.zeros((n_nodes, 3))
        np.add.at(total, who, pull)
        growing = np.unique(who)
        pull = total[growing] / np.maximum(np.linalg.norm(total[growing], axis=1, keepdims=True), 1e-9)
        away = unit(all_xyz[growing] - hilum[all_lobe[growing]])
        direction = unit(pull + radial * away + rng.normal(0.0, jitter, (len(growing), 3)))
        cand = all_xyz[growing] + step * direction
        ok = lungs.lobe_at(cand) == all_lobe[growing]
        growing, cand = growing[ok], cand[ok]
        if not len(growing):
            break
        new_xyz, new_lobe, new_first = cand, all_lobe[growing], n_nodes
        nodes.append(cand)
        parent.append(growing)
        node_lobe.append(new_lobe)
        n_nodes += len(cand)
        all_xyz = np.concatenate([all_xyz, cand])
        all_lobe = np.concatenate([all_lobe, new_lobe])
    return _Tree(np.concatenate(nodes), np.concatenate(parent), np.concatenate(node_lobe))


def _stems(lungs: LungMap, root: np.ndarray, root_r: float, lobes: tuple[int, ...]) -> tuple[_Tree, dict[int, float]]:
    """One seed node per lobe at its entry (parent: -1) and the lobar stem radius."""
    nodes, lobe_ids, radius = [], [], {}
    for lobe, entry, share in _entries(lungs, root, lobes):
        nodes.append(entry)
        lobe_ids.append(lobe)
        radius[lobe] = max(root_r * share ** (1.0 / 3.0), 1.5)
    if not nodes:
        return _Tree(np.zeros((0, 3)), np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)), radius
    return _Tree(np.array(nodes), np.full(len(nodes), -1, dtype=np.intp), np.array(lobe_ids)), radius


def _merge(trees: list[_Tree]) -> _Tree:
    out_nodes, out_parent, out_lobe, offset = [], [], [], 0
    for t in trees:
        out_nodes.append(t.nodes)
        out_parent.append(np.where(t.parent >= 0, t.parent + offset, -1))
        out_lobe.append(t.lobe)
        offset += len(t.nodes)
    return _Tree(np.concatenate(out_nodes), np.concatenate(out_parent), np.concatenate(out_lobe))


def _hilar(tree: _Tree, roots: list[np.ndarray], radii: np.ndarray, root_r: float) -> Segments:
    """Segments from the hilar root to each lobe's first node."""
    first = np.flatnonzero(tree.parent < 0)
    a = np.array([roots[0] if tree.lobe[i] <= 3 else roots[1] for i in first])
    return Segments(a, tree.nodes[first], np.full(len(first), root_r), radii[first])


def _twigs(grower: Grower, tree: _Tree, radii: np.ndarray, hilum: np.ndarray, rng: np.random.Generator) -> Segments:
    """Random-walk twigs from every leaf down to 0.25 mm."""
    has_child = np.zeros(len(tree.parent), dtype=bool)
    has_child[tree.parent[tree.parent >= 0]] = True
    leaf = np.flatnonzero(~has_child & (tree.parent >= 0))
    if not len(leaf):
        return Segments.empty()
    d = unit(tree.nodes[leaf] - tree.nodes[tree.parent[leaf]])
    front = Front(
        tree.nodes[leaf], d, radii[leaf], tree.lobe[leaf], perpendicular(d, rng), np.repeat(hilum[None], len(leaf), 0)
    )
    pieces, _ = grower.grow(grower.split(front), r_min=0.25, length_ratio=(5.0, 8.0), wobble=0.1, max_generations=3)
    return pieces


def grow_lungs(
    lungs: LungMap,
    roots: dict[str, tuple[np.ndarray, np.ndarray, float]],
    rng: np.random.Generator,
    *,
    density: float = 1.0,
) -> dict[str, tuple[Segments, Segments]]:
    """Grow airways, arteries and veins for both lungs.

    Args:
        lungs: the coarse lung map.
        roots: hilar start points, directions and radii by name (``airway_R``, ``artery_L``,
            ``vein_RS``, ...) from :func:`~medai.phantoms.independent.organs.build_organs`.
        rng: randomness of the growth.
        density: scales the number of attraction points (fewer for coarse images).

    Returns:
        ``{"airway": (outer wall, lumen), "artery": (vessels, empty), "vein": (vessels, empty)}``.
    """
    occupancy = np.zeros(lungs.lobe.shape, dtype=np.float32)
    grower = Grower(lungs, rng, occupancy)
    volume = np.bincount(lungs.lobe.ravel(), minlength=6)[1:].astype(float)

    def counts(per_litre: float) -> dict[int, int]:
        litres = volume * float(np.prod(lungs.spacing)) / 1e6
        return {k + 1: round(per_litre * density * litres[k]) for k in range(5) if volume[k] > 0}

    # airways
    seeds, aw_radius, hila = [], {}, []
    for side, lobes in (("R", (1, 2, 3)), ("L", (4, 5))):
        root_p, _, root_r = roots[f"airway_{side}"]
        tree, radius = _stems(lungs, root_p, root_r * 1.1, lobes)
        seeds.append(tree)
        aw_radius.update(radius)
        hila.append(root_p)
    airway = _colonise(lungs, _merge(seeds), counts(160.0), rng, step=3.0, influence=45.0, kill=6.0, jitter=0.12)
    airway = airway.smoothed()
    r_aw = airway.radii(aw_radius)
    keep = r_aw >= 0.6
    keep[airway.parent < 0] = True
    lumen = Segments.concat([_hilar(airway, hila, r_aw, 6.0), _prune(airway, r_aw, keep)])
    thickness = 0.15 * lumen.ra + 0.3
    walls = Segments(lumen.a, lumen.b, lumen.ra + thickness, lumen.rb + thickness)
    # arteries: the airway tree shifted beside itself, then colonising on
    art_radius, art_hila = {}, []
    for side, lobes in (("R", (1, 2, 3)), ("L", (4, 5))):
        root_p, _, root_r = roots[f"artery_{side}"]
        _, radius = _stems(lungs, root_p, 0.75 * root_r, lobes)
        art_radius.update(radius)
        art_hila.append(root_p)
    shift = _bundle_offsets(airway, r_aw, rng)
    art_seed = _Tree(airway.nodes + shift, airway.parent.copy(), airway.lobe.copy())
    arteries = _colonise(lungs, art_seed, counts(500.0), rng, step=3.0, influence=35.0, kill=4.0, jitter=0.07)
    arteries = arteries.smoothed()
    r_art = arteries.radii(art_radius)
    art = Segments.concat([_hilar(arteries, art_hila, r_art, roots["artery_R"][2]), arteries.segments(r_art)])
    # veins
    vein_trees: list[tuple[_Tree, np.ndarray, float]] = []
    vein_radius: dict[int, float] = {}
    vein_lobes: dict[str, tuple[int, ...]] = {"vein_RS": (1, 2), "vein_RI": (3,), "vein_LS": (4,), "vein_LI": (5,)}
    for name, fed in vein_lobes.items():
        root_p, _, root_r = roots[name]
        tree, radius = _stems(lungs, root_p, 0.9 * root_r, fed)
        vein_trees.append((tree, root_p, root_r))
        vein_radius.update(radius)
    veins = _colonise(
        lungs,
        _merge([t for t, _, _ in vein_trees]),
        counts(500.0),
        rng,
        step=3.0,
        influence=40.0,
        kill=4.5,
        jitter=0.07,
    )
    veins = veins.smoothed()
    r_vein = veins.radii(vein_radius)
    first = np.flatnonzero(veins.parent < 0)
    starts = np.concatenate([np.repeat(p[None], len(t.nodes), 0) for t, p, _ in vein_trees])
    vein_stems = Segments(
        starts, veins.nodes[first], np.concatenate([np.full(len(t.nodes), r) for t, _, r in vein_trees]), r_vein[first]
    )
    vein = Segments.concat([vein_stems, veins.segments(r_vein)])
    # twigs (and the occupancy they avoid)
    for seg in (art, vein):
        mid = 0.5 * (seg.a + seg.b)
        np.add.at(
            occupancy.ravel(),
            np.maximum(lungs.index(mid), 0),
            np.pi * seg.ra**2 * np.linalg.norm(seg.b - seg.a, axis=1),
        )
    hilum = 0.5 * (hila[0] + hila[1])
    art = Segments.concat([art, _twigs(grower, arteries, r_art, hilum, rng)])
    vein = Segments.concat([vein, _twigs(grower, veins, r_vein, hilum, rng)])
    empty = Segments.empty()
    return {"airway": (walls, lumen), "artery": (art, empty), "vein": (vein, empty)}


def _prune(tree: _Tree, radii: np.ndarray, keep: np.ndarray) -> Segments:
    child = np.flatnonzero((tree.parent >= 0) & keep)
    return Segments(tree.nodes[tree.parent[child]], tree.nodes[child], radii[child], radii[child])


def _bundle_offsets(tree: _Tree, radii: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per node, the shift that puts an artery beside its airway (one side per lobe, turning slowly)."""
    offsets = np.zeros_like(tree.nodes)
    direction = np.zeros_like(tree.nodes)
    has = tree.parent >= 0
    direction[has] = unit(tree.nodes[has] - tree.nodes[tree.parent[has]])
    roots = np.flatnonzero(~has)
    direction[roots] = unit(rng.normal(size=(len(roots), 3)))
    side = perpendicular(direction, rng)
    for i in range(len(tree.parent)):  # inherit the parent's side, kept perpendicular to the branch
        p = tree.parent[i]
        if p >= 0:
            v = side[p] - (side[p] @ direction[i]) * direction[i]
            side[i] = v / max(np.linalg.norm(v), 1e-9)
    gap = radii * 2.3 + 0.8
    offsets = side * gap[:, None]
    return offsets
