"""Random-walk twigs: curved walks that split by Murray's law with minimum-work angles.

Growth runs one generation at a time for all branches together. A branch
walks a few steps from its start, its direction jittered at every step, bent
away from the pleura and the fissures near them (the gradient of a distance
map) and drifting away from the hilum; a step that leaves its lobe is bent
inward once, and a thin branch that still leaves dies. At its end a branch
splits in two: radii follow Murray's law (``r**3 = r1**3 + r2**3``) with a
random asymmetry, angles follow the minimum-work angles of the two radii,
and the plane of the split is chosen greedily among a few random rotations:
the pair whose look-ahead points lie deepest in the lobe and in the emptiest
space (an occupancy grid that every drawn branch fills) wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medai.phantoms.independent.lungmap import LungMap, Segments

__all__ = ["Front", "Grower", "perpendicular", "unit"]


@dataclass
class Front:
    """The growing ends of many branches at once (one row per branch)."""

    p: np.ndarray  # (n, 3)
    d: np.ndarray  # (n, 3) unit
    r: np.ndarray  # (n,)
    lobe: np.ndarray  # (n,)
    normal: np.ndarray  # (n, 3) unit, perpendicular to d: the last branching plane's normal
    hilum: np.ndarray  # (n, 3) where the tree enters the lung: branches drift away from it

    def take(self, keep: np.ndarray) -> Front:
        return Front(self.p[keep], self.d[keep], self.r[keep], self.lobe[keep], self.normal[keep], self.hilum[keep])

    @staticmethod
    def concat(parts: list[Front]) -> Front:
        fields = ("p", "d", "r", "lobe", "normal", "hilum")
        return Front(*(np.concatenate([getattr(f, k) for f in parts]) for k in fields))


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=d.shape)
    return unit(v - np.sum(v * d, axis=-1, keepdims=True) * d)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues rotation of vectors ``v`` about unit ``axis`` by ``angle`` (broadcast)."""
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    return v * c + np.cross(axis, v) * s + axis * np.sum(axis * v, axis=-1, keepdims=True) * (1 - c)


class Grower:
    """Grows fronts of branches inside their lobes.

    Args:
        lungs: lobes, distance to their boundary and its gradient.
        rng: the randomness of the walk.
        occupancy: vessel volume (mm3) per planning voxel; drawn branches add to it.
    """

    def __init__(self, lungs: LungMap, rng: np.random.Generator, occupancy: np.ndarray) -> None:
        self.lungs, self.rng, self.occ = lungs, rng, occupancy
        self.cell_mm3 = float(np.prod(lungs.spacing))

    def walk(self, front: Front, length: np.ndarray, steps: int, wobble: float) -> tuple[Segments, Front, np.ndarray]:
        """Walk every branch ``steps`` steps.

        A step that would leave the lobe is bent inward once; if it still leaves, a thick branch stops
        where it is (its children carry on) and a thin one dies.

        Returns:
            The drawn pieces, the new front and which branches survived.
        """
        lungs, rng = self.lungs, self.rng
        p, d = front.p.copy(), front.d.copy()
        alive = np.ones(len(p), dtype=bool)
        moving = np.ones(len(p), dtype=bool)
        step = (length / steps)[:, None]
        pieces = []
        r_end = front.r * 0.95
        prev_cap = np.full(len(p), np.inf)
        for k in range(steps):
            ahead = p + d * step * 1.5
            depth = lungs.depth_at(ahead)
            near = np.clip(1.0 - depth / (2.0 * front.r + 5.0), 0.0, 1.0) * np.clip(front.r - 0.6, 0.0, 1.0)
            away = unit(p - front.hilum)
            bend = lungs.inward(ahead) * (0.6 * near)[:, None]
            d = unit(d + rng.normal(0.0, wobble, d.shape) + bend + away * 0.04)
            q = p + d * step
            out = lungs.lobe_at(q) != front.lobe
            if out.any():
                d2 = unit(d + 2.0 * lungs.inward(p))
                q2 = p + d2 * step
                fixed = out & (lungs.lobe_at(q2) == front.lobe)
                q = np.where(fixed[:, None], q2, q)
                d = np.where(fixed[:, None], d2, d)
                stuck = out & ~fixed
                moving &= ~stuck
                alive &= ~(stuck & (front.r < 1.5))
            ra = front.r + (r_end - front.r) * (k / steps)
            rb = front.r + (r_end - front.r) * ((k + 1) / steps)
            far = np.linalg.norm(q - front.hilum, axis=1) > 35.0
            cap = np.where(far, 0.3 + 0.12 * lungs.depth_at(q), np.inf)  # vessels thin out toward the pleura
            if k:
                ra = np.minimum(ra, prev_cap)
            rb = np.minimum(rb, cap)
            prev_cap = cap
            keep = moving & alive
            pieces.append(Segments(p[keep], q[keep], ra[keep], rb[keep]))
            np.add.at(self.occ.ravel(), np.maximum(lungs.index(q[keep]), 0), (np.pi * rb[keep] ** 2) * step[keep, 0])
            p = np.where(keep[:, None], q, p)
        new = Front(p, d, np.minimum(r_end, prev_cap), front.lobe, front.normal, front.hilum)
        return Segments.concat(pieces), new, alive

    def split(self, front: Front, candidates: int = 6) -> Front:
        """Two children per branch: Murray radii and angles, split plane chosen among random rotations."""
        rng, lungs = self.rng, self.lungs
        n = len(front.r)
        alpha = rng.uniform(0.3, 1.0, n)
        r1 = front.r / (1.0 + alpha**3) ** (1.0 / 3.0)
        r2 = alpha * r1
        x1, x2 = (r1 / front.r) ** 2, (r2 / front.r) ** 2
        th1 = np.arccos(np.clip((1 + x1**2 - x2**2) / (2 * x1), -1, 1)) + rng.normal(0, 0.08, n)
        th2 = np.arccos(np.clip((1 + x2**2 - x1**2) / (2 * x2), -1, 1)) + rng.normal(0, 0.1, n)
        th1, th2 = np.clip(th1, 0.1, 0.9), np.clip(th2, 0.3, 1.25)
        # candidate split planes: the parent's plane turned by ~90 degrees, then random turns
        psi = math.pi / 2 + rng.uniform(-math.pi / 2, math.pi / 2, (n, candidates))
        normal = _rotate(np.repeat(front.normal[:, None], candidates, 1), front.d[:, None], psi)
        d = np.repeat(front.d[:, None], candidates, 1)
        c1 = _rotate(d, normal, np.repeat(th1[:, None], candidates, 1))
        c2 = _rotate(d, normal, -np.repeat(th2[:, None], candidates, 1))
        score = np.zeros((n, candidates))
        occ = self.occ.ravel()
        for c, r in ((c1, r1), (c2, r2)):
            for reach in (5.0, 10.0, 16.0):
                q = front.p[:, None] + c * (r * reach + 2.0)[:, None, None]
                depth = lungs.depth_at(q)
                same = lungs.lobe_at(q) == front.lobe[:, None]
                crowd = occ[np.maximum(lungs.index(q), 0)] / self.cell_mm3
                score += np.minimum(depth, 15.0) * same - 15.0 * ~same - 60.0 * crowd
        score += rng.normal(0.0, 0.5, score.shape)
        best = np.argmax(score, axis=1)
        rows = np.arange(n)
        nrm = normal[rows, best]
        return Front(
            p=np.concatenate([front.p, front.p]),
            d=np.concatenate([c1[rows, best], c2[rows, best]]),
            r=np.concatenate([r1, r2]),
            lobe=np.concatenate([front.lobe, front.lobe]),
            normal=np.concatenate([nrm, nrm]),
            hilum=np.concatenate([front.hilum, front.hilum]),
        )

    def grow(
        self,
        front: Front,
        *,
        r_min: float,
        length_ratio: tuple[float, float],
        wobble: float,
        max_generations: int = 30,
    ) -> tuple[Segments, Front]:
        """Grow until every branch is thinner than ``r_min``; returns the pieces and the ends of the thinnest."""
        out: list[Segments] = []
        ends: list[Front] = []
        for _ in range(max_generations):
            if not len(front.r):
                break
            length = front.r * self.rng.uniform(*length_ratio, len(front.r))
            length = np.clip(length, 1.5, 40.0)
            pieces, front, alive = self.walk(front, length, 4, wobble)
            out.append(pieces)
            front = front.take(alive)
            thin = front.r < r_min * 1.26
            ends.append(front.take(thin))
            front = front.take(~thin)
            if len(front.r):
                front = self.split(front)
        return Segments.concat(out), Front.concat(ends) if ends else front
