"""The global branch: image-level evidence from the teacher's deep features, fused with the map's score.

Globally average-pooled teacher features at deep layers (side by side), with a density of normal images: the
distance to the nearest training image's pooled features (global_density="nearest", the default), or a
Gaussian (Ledoit-Wolf shrunk covariance; "gaussian") and the Mahalanobis distance to it. The
image score is then a weighted sum of the map score and the global score, each standardised (mean, std) on
held-out normal images so neither dominates by scale. The heatmap stays MSFD's.
"""
from __future__ import annotations

import warnings

import torch

# chosen on the development parts (docs/quality.md). The branch's teacher may be a larger network than the map's:
# it runs once per image, to its pooled layers. ResNets have no measurement yet, so no default branch.
DEFAULT_BACKBONES = {"efficientnet_lite0": "efficientnet_lite2", "efficientnet_lite1": "efficientnet_lite2",
                     "efficientnet_lite2": "efficientnet_lite2"}
DEFAULT_LAYERS = {"efficientnet_lite0": "stage7", "efficientnet_lite1": "stage7", "efficientnet_lite2": "stage5,stage6"}
DEFAULT_WEIGHT = 0.6
DENSITIES = ("nearest", "gaussian")
DEFAULT_DENSITY = "nearest"
MAX_MEMORY = 4096  # the nearest-neighbour memory keeps at most this many training images (greedy k-centre)
# global_image_size="auto": the side of the whole-image view a teacher of its own sees (None: the map's input)
DEFAULT_IMAGE_SIDES = {"efficientnet_lite2": 192}


def default_layer(backbone: str) -> str | None:
    """The global layer for global_layer="auto" of a global-branch teacher (None: the branch stays off)."""
    return DEFAULT_LAYERS.get(backbone)


def resolve(backbone: str, global_backbone: str | None, global_layer: str | None) -> tuple[str | None, str | None]:
    """(global_backbone, global_layer) with "auto" resolved for a detector whose map runs on `backbone`.
    global_backbone None: the map's own teacher; "auto": DEFAULT_BACKBONES (the map's teacher where it has no
    entry). global_layer "auto": the default layer of the branch's teacher; None: no global branch."""
    from .backbones import layer_order

    named = global_backbone not in ("auto", None)
    if named:
        layer_order(global_backbone)  # an unknown name is refused, naming the choices
    if global_backbone == "auto":
        global_backbone = DEFAULT_BACKBONES.get(backbone, backbone)
    if global_backbone == backbone:
        global_backbone = None
    if global_layer is not None and not isinstance(global_layer, str):  # a list of layers: one setting string
        global_layer = ",".join(global_layer)
    if global_layer == "auto":
        global_layer = default_layer(global_backbone or backbone)
        if global_layer is None and named:
            raise ValueError(f"global_backbone {global_backbone!r} has no default global layer: name one with "
                             f"global_layer= (its layers: {', '.join(layer_order(global_backbone))})")
    return (global_backbone if global_layer else None), global_layer


def resolve_image_size(global_backbone: str | None, global_image_size):
    """global_image_size with "auto" resolved: DEFAULT_IMAGE_SIDES for a branch with a teacher of its own, else
    None (the map's input)."""
    if isinstance(global_image_size, str) and global_image_size == "auto":
        return DEFAULT_IMAGE_SIDES.get(global_backbone) if global_backbone else None
    return global_image_size


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C) float32 global average."""
    return features.float().mean(dim=(2, 3))


def pooled_layers(features, indices) -> torch.Tensor:
    """The global averages of features[i] for i in indices, side by side: (B, sum of their channels)."""
    return torch.cat([pooled(features[i]) for i in indices], dim=1)


def layer_names(global_layer) -> tuple[str, ...]:
    """A global_layer setting ("stage6", "stage5,stage6", a list, or None) as a tuple of layer names."""
    if not global_layer:
        return ()
    names = tuple(n.strip() for n in (global_layer.split(",") if isinstance(global_layer, str) else global_layer))
    if len(set(names)) != len(names):
        raise ValueError(f"global_layer names a layer twice: {global_layer!r}")
    return names


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mean, precision, shrinkage) of samples x (N, C): the covariance shrunk towards a scaled identity by the
    Ledoit-Wolf (2004) optimal amount, in float64; well conditioned even with fewer samples than channels."""
    x = x.double()
    n, c = x.shape
    mean = x.mean(0)
    xc = x - mean
    sample = xc.T @ xc / n
    mu = torch.trace(sample) / c
    delta = ((sample - mu * torch.eye(c, dtype=x.dtype)) ** 2).sum() / c
    # sum over samples of ||x x^T - S||_F^2, expanded so that no C x C matrix per sample is formed
    spread = ((xc * xc).sum(1) ** 2).sum() - 2 * ((xc @ sample) * xc).sum() + n * (sample ** 2).sum()
    beta = spread / (c * n * n)
    beta = torch.minimum(beta, delta)
    shrinkage = float(beta / delta) if float(delta) > 0 else 1.0
    cov = (1 - shrinkage) * sample + shrinkage * mu * torch.eye(c, dtype=x.dtype)
    return mean.float(), torch.linalg.inv(cov).float(), shrinkage


def fit_density(features: torch.Tensor, what: str = "the global branch") -> tuple[torch.Tensor, torch.Tensor]:
    """mean, precision of pooled features (N, C); warns when N is too small for a full covariance."""
    n, c = features.shape
    if n < 2:
        raise ValueError(f"{what} needs at least 2 normal images, got {n}")
    mean, precision, shrinkage = ledoit_wolf(features)
    if n <= c:
        warnings.warn(f"{what}: {n} normal images for {c} feature channels; the covariance is shrunk "
                      f"(Ledoit-Wolf, {shrinkage:.2f} towards the identity). {c + 1} or more images (several "
                      f"times {c} is better) would estimate it fully.", stacklevel=3)
    return mean, precision


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B,) distances."""
    d = x.float() - mean
    return ((d @ precision) * d).sum(-1).clamp_min(0).sqrt()


def standardize_stats(scores: torch.Tensor) -> tuple[float, float]:
    s = scores.double()
    return float(s.mean()), max(float(s.std()) if len(s) > 1 else 0.0, 1e-6)


def standardized(map_score: torch.Tensor, global_score: torch.Tensor, stats: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z map score, z global score); stats = [map mean, map std, global mean, global std]."""
    return (map_score.float() - stats[0]) / stats[1], (global_score.float() - stats[2]) / stats[3]


def fuse_z(z_map: torch.Tensor, z_global: torch.Tensor, weight: float) -> torch.Tensor:
    """The fused image score of standardised parts: (1 - weight) * z_map + weight * z_global."""
    return (1 - weight) * z_map + weight * z_global


def fuse(map_score: torch.Tensor, global_score: torch.Tensor, stats: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) * z(map score) + weight * z(global score); stats = [map mean, map std, global mean, std]."""
    return fuse_z(*standardized(map_score, global_score, stats), weight)


def memory_bank(features: torch.Tensor, max_size: int = MAX_MEMORY) -> torch.Tensor:
    """The pooled features (N, C) the nearest-neighbour density keeps: all of them, or max_size chosen by
    greedy k-centre (each next one the farthest from those kept), which covers the normal images' spread
    where a random share would drop rare normal looks."""
    x = features.float()
    if len(x) < 2:
        raise ValueError(f"the global branch needs at least 2 normal images, got {len(x)}")
    if len(x) <= max_size:
        return x.clone()
    kept = [int((x - x.mean(0)).pow(2).sum(1).argmin())]  # start at the most typical image: deterministic
    nearest = (x - x[kept[0]]).pow(2).sum(1)
    for _ in range(max_size - 1):
        kept.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, (x - x[kept[-1]]).pow(2).sum(1))
    return x[kept].clone()


def nearest_distance(x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B,) Euclidean distance to the nearest row of memory (M, C), as matrix products (the same
    arithmetic in every runtime)."""
    return _squared_distances(x.float(), memory.float()).min(dim=-1).values.clamp_min(0).sqrt()


def leave_one_out_distance(x: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N,) each row's distance to the nearest other row: how a memory's own images score as if
    they were new normal images."""
    squared = _squared_distances(x.float(), x.float())
    squared.fill_diagonal_(float("inf"))
    return squared.min(dim=-1).values.clamp_min(0).sqrt()


def _squared_distances(x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    # |x|^2 - 2 x.m + |m|^2 cancels where x lies near m: centred on the memory's mean the norms are the
    # features' spread, not their offset (float32 here; bfloat16 matrix products in OpenVINO)
    centre = memory.mean(dim=0)
    x, memory = x - centre, memory - centre
    return (x * x).sum(-1, keepdim=True) - 2 * x @ memory.T + (memory * memory).sum(-1)


def distance(x: torch.Tensor, density: str, mean: torch.Tensor | None, precision: torch.Tensor | None,
             memory: torch.Tensor | None) -> torch.Tensor:
    """The global score of pooled features (B, C) under the branch's density (which reads only its own)."""
    return nearest_distance(x, memory) if density == "nearest" else mahalanobis(x, mean, precision)
