"""Point-cloud data: the built-in `digits3d` clouds, one-file-per-cloud storage, point view policies and the point
operations point-cloud methods share (farthest point sampling, kNN grouping, Chamfer distance).

Storage: a cloud `[N, 3]` (centred, scaled into the unit sphere) is written as ONE 16-bit grayscale PNG of N rows and
3 columns (x, y, z quantised uniformly over [-1, 1], 65535 levels, ~3e-5 resolution). It decodes with PIL, so the
streaming pipeline (`SSLViewDataset`: undecodable / zero-byte / truncated files are skipped and counted) works
unchanged; :func:`decode_points` raises `UndecodableImage` for anything that is not such a table.

`digits3d` (the 3D-MNIST construction on real data): each of scikit-learn's 1,797 real handwritten digits is
upsampled to 32 x 32, its ink pixels become points sampled proportionally to ink intensity, extruded along z
(uniform thickness 0.3 of the glyph size), jittered (sigma 0.01), rotated by a random yaw in +-45 degrees and pitch /
roll in +-15 degrees, normalised into the unit sphere; 2,048 points per cloud; the split is the one of the built-in
`digits` (30 test clouds per class), labels are the digit classes.
"""

from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np
import torch
from PIL import Image

DIGITS3D_POINTS = 2048


# ----------------------------------------------------------------------------------------------------
# storage
# ----------------------------------------------------------------------------------------------------
def normalize_points(points: np.ndarray) -> np.ndarray:
    """Centre a cloud and scale it into the unit sphere (the ShapeNet / ModelNet convention)."""
    points = np.asarray(points, dtype=np.float64)
    points = points - points.mean(axis=0, keepdims=True)
    radius = np.sqrt((points ** 2).sum(axis=1)).max()
    return points / max(radius, 1e-12)


def encode_points(points: np.ndarray) -> bytes:
    """`[N, 3]` coordinates in [-1, 1] -> bytes of a 16-bit grayscale PNG (N rows x 3 columns)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {points.shape}")
    if np.abs(points).max() > 1.0 + 1e-6:
        raise ValueError("points must lie in [-1, 1] (normalize_points first)")
    q = np.round((np.clip(points, -1, 1) + 1.0) * 0.5 * 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG")
    return buf.getvalue()


def decode_points(value) -> np.ndarray:
    """A stored cloud (PIL image, `{"bytes", "path"}` dict, bytes or path) -> float32 `[N, 3]` in [-1, 1]. Raises
    `UndecodableImage` for unreadable files and for images that are not a 16-bit N x 3 point table."""
    from .data import UndecodableImage, decode_image

    img = decode_image(value, mode=None)
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise UndecodableImage(f"not a 16-bit point table (PIL mode {img.mode!r})")
    arr = np.asarray(img)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 1:
        raise UndecodableImage(f"a point table must be N x 3, got {arr.shape}")
    return (arr.astype(np.float32) / 65535.0) * 2.0 - 1.0


# ----------------------------------------------------------------------------------------------------
# built-in digits3d
# ----------------------------------------------------------------------------------------------------
def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def digit_to_cloud(image: np.ndarray, rng: np.random.Generator, num_points: int = DIGITS3D_POINTS,
                   thickness: float = 0.3, jitter: float = 0.01, max_yaw: float = np.pi / 4,
                   max_tilt: float = np.pi / 12) -> np.ndarray:
    """Lift a grayscale digit (any size, ink bright) to a normalised 3-D cloud `[num_points, 3]`."""
    img = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
    ink = np.asarray(img, dtype=np.float64) / 255.0
    ink = np.where(ink > 0.2, ink, 0.0)
    if ink.sum() <= 0:
        ink = np.ones_like(ink)
    rows, cols = np.nonzero(ink)
    weights = ink[rows, cols] / ink[rows, cols].sum()
    pick = rng.choice(len(rows), size=num_points, replace=True, p=weights)
    # sub-pixel position inside the picked pixel; image row grows downwards -> y = -row
    x = (cols[pick] + rng.uniform(0, 1, num_points)) / 32.0 - 0.5
    y = -((rows[pick] + rng.uniform(0, 1, num_points)) / 32.0 - 0.5)
    z = rng.uniform(-thickness / 2, thickness / 2, num_points)
    pts = np.stack([x, y, z], axis=1) + rng.normal(0, jitter, (num_points, 3))
    rot = _rotation(rng.uniform(-max_yaw, max_yaw), rng.uniform(-max_tilt, max_tilt), rng.uniform(-max_tilt, max_tilt))
    pts = pts @ rot.T
    return normalize_points(pts)[rng.permutation(num_points)]


def materialize_digits3d(root: str) -> str:
    """Write `<root>/digits3d/{train,test}/<label>/<index>.png` (one point table per cloud) and return the folder."""
    out = os.path.join(root, "digits3d")
    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        return out
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    labels = digits.target
    split_rng = np.random.default_rng(0)  # the same split as the built-in `digits`
    test_idx = set()
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test_idx.update(split_rng.choice(idx, size=30, replace=False).tolist())
    tmp = out + f".tmp-{os.getpid()}"
    for i, (img, label) in enumerate(zip(images, labels)):
        rng = np.random.default_rng([1234, i])
        split = "test" if i in test_idx else "train"
        d = os.path.join(tmp, split, str(int(label)))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:04d}.png"), "wb") as f:
            f.write(encode_points(digit_to_cloud(img, rng)))
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    open(done, "w").close()
    return out


# ----------------------------------------------------------------------------------------------------
# view policies
# ----------------------------------------------------------------------------------------------------
def _register_policies():
    from .data import UndecodableImage, register_view_policy

    class _PointPolicy:
        """Shared: the dataset decodes each file with its own mode (`wants_frames` + `frame_mode=None`, so the 16-bit
        table is not converted to RGB) and the policy returns `num_points` points."""

        wants_frames = True
        frame_mode = None

        def __init__(self, config):
            self.config = config
            self.num_points = int(config.num_points)
            self.aug = dict(config.augmentation)

        def points(self, img) -> np.ndarray:
            if isinstance(img, (list, tuple)):
                if len(img) != 1:
                    raise UndecodableImage(f"a point table is a single-page file, got {len(img)} pages")
                img = img[0]
            pts = decode_points(img)
            if not np.isfinite(pts).all():
                raise UndecodableImage("non-finite point coordinates")
            return pts

    @register_view_policy("points")
    class PointTrainPolicy(_PointPolicy):
        """Training views: a random subset of `num_points` points (with replacement when the cloud has fewer), then
        the official Point-MAE / I2P-MAE `PointcloudScaleAndTranslate`: per-axis scale U(2/3, 3/2) and translation
        U(-0.2, 0.2)."""

        def __call__(self, img, rng):
            pts = self.points(img)
            n = len(pts)
            idx = rng.choice(n, size=self.num_points, replace=n < self.num_points)
            pts = pts[idx]
            lo, hi = self.aug.get("point_scale", (2 / 3, 3 / 2))
            shift = float(self.aug.get("point_translate", 0.2))
            pts = pts * rng.uniform(lo, hi, (1, 3)) + rng.uniform(-shift, shift, (1, 3))
            return {"point_values": torch.from_numpy(pts.astype(np.float32))}

    @register_view_policy("points_eval")
    class PointEvalPolicy(_PointPolicy):
        """Deterministic: the first `num_points` stored points (stored clouds are in random order), no augmentation."""

        def __call__(self, img, rng=None):
            pts = self.points(img)
            if len(pts) < self.num_points:
                pts = np.concatenate([pts, pts[np.arange(self.num_points - len(pts)) % len(pts)]])
            return {"point_values": torch.from_numpy(pts[: self.num_points].astype(np.float32))}

    return PointTrainPolicy, PointEvalPolicy


PointTrainPolicy, PointEvalPolicy = _register_policies()


# ----------------------------------------------------------------------------------------------------
# point operations (torch)
# ----------------------------------------------------------------------------------------------------
def check_point_values(points, name: str = "point_values", min_points: int = 1) -> None:
    """A clear error for a point batch that is not a float `[B, N, 3]` tensor with enough points."""
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must be [batch, num_points, 3] (xyz), got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {points.dtype}")
    if points.shape[1] < min_points:
        raise ValueError(f"{name} has {points.shape[1]} points per cloud; this model needs at least {min_points}")


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, num_samples: int, start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Indices `[B, S]` of iterative farthest point sampling (PointNet++), starting from point 0 (as the CUDA
    `furthest_point_sample` used by Point-MAE / I2P-MAE) unless `start` `[B]` is given."""
    b, n, _ = xyz.shape
    if num_samples > n:
        raise ValueError(f"cannot sample {num_samples} of {n} points")
    idx = torch.zeros(b, num_samples, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), device=xyz.device, dtype=xyz.dtype)
    far = torch.zeros(b, dtype=torch.long, device=xyz.device) if start is None else start.long()
    batch = torch.arange(b, device=xyz.device)
    for i in range(num_samples):
        idx[:, i] = far
        centroid = xyz[batch, far].unsqueeze(1)
        dist = torch.minimum(dist, ((xyz - centroid) ** 2).sum(-1))
        far = dist.argmax(dim=1)
    return idx


@torch.no_grad()
def knn_indices(xyz: torch.Tensor, centers: torch.Tensor, k: int) -> torch.Tensor:
    """`[B, G, k]` indices of the k nearest points of `xyz` `[B, N, 3]` to each of `centers` `[B, G, 3]` (nearest
    first; the centre itself, a point of the cloud, comes first)."""
    d = torch.cdist(centers, xyz)
    return d.topk(k, dim=-1, largest=False).indices


def gather_points(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`x` `[B, N, C]`, `index` `[B, ...]` -> `[B, ..., C]`."""
    b = x.shape[0]
    flat = index.reshape(b, -1)
    out = torch.gather(x, 1, flat.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out.reshape(*index.shape, x.shape[-1])


def group_points(xyz: torch.Tensor, num_groups: int, group_size: int):
    """Point-MAE grouping: FPS centres `[B, G, 3]`, kNN neighbourhoods relative to their centre `[B, G, K, 3]`, and
    the neighbour indices `[B, G, K]` (into the cloud) and centre indices `[B, G]`."""
    center_idx = farthest_point_sample(xyz, num_groups)
    centers = gather_points(xyz, center_idx)
    nbr_idx = knn_indices(xyz, centers, group_size)
    neighborhoods = gather_points(xyz, nbr_idx) - centers.unsqueeze(2)
    return neighborhoods, centers, nbr_idx, center_idx


def chamfer_distance_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared-L2 Chamfer distance of point sets `[L, P, 3]` vs `[L, Q, 3]`, as Point-MAE's `ChamferDistanceL2`:
    mean over all predicted points of the squared distance to the nearest target point plus the same from target to
    prediction (means over the L sets together)."""
    d = ((pred.unsqueeze(2) - target.unsqueeze(1)) ** 2).sum(-1)  # explicit: cdist's backward is NaN at distance 0
    return d.min(dim=2).values.mean() + d.min(dim=1).values.mean()


__all__ = ["encode_points", "decode_points", "normalize_points", "digit_to_cloud", "materialize_digits3d",
           "PointTrainPolicy", "PointEvalPolicy", "check_point_values", "farthest_point_sample", "knn_indices",
           "gather_points", "group_points", "chamfer_distance_l2", "DIGITS3D_POINTS"]
