"""The training data set: augmentation and the cached, map-style :class:`ImageDataset`.

* :class:`Augmentation` changes training images without changing their statistics (borders filled
  from the image itself, intensity changes centred on the image's own level).
* :class:`ImageDataset` turns items into network inputs through exactly the preprocessing used for
  inference (:func:`napari_gradcam.preprocess.image_to_tensor`), caches the decoded, resized
  images in memory as uint8 when they fit, and applies augmentation to the unit-range tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from ..errors import DatasetError, ImageError
from .images import read_image
from .splits import ImageFolderData

if TYPE_CHECKING:  # pragma: no cover
    import torch

CACHE_LIMIT_BYTES = 2 << 30



#: How :class:`Augmentation` fills the border that a rotation, shift or zoom uncovers.
FILLS = ("reflection", "border", "zeros")


@dataclass
class Augmentation:
    """Random geometry and intensity changes applied to unit-range image tensors during training.

    The changes keep the image statistics that the network sees at inference: the border that a
    rotation, shift or zoom-out uncovers is filled from the image itself (``fill="reflection"``, or
    ``"border"`` to repeat the edge pixels), never with zeros, and every intensity change is centred on
    the image's own level (brightness ``x * b`` and gamma ``x ** g`` with ``log b``, ``log g`` symmetric
    around 0, contrast around the image's own mean).  A zero fill makes augmented images darker than any
    real one; BatchNorm's running statistics then follow that darker distribution and the validation
    logits shift (accuracy at the majority-class rate while ROC AUC stays high).

    Chest X-ray defaults: small rotations, shifts and zoom, and no flips (a flipped chest puts the heart
    on the wrong side); set ``flips=True`` for other images.  Each image of a batch gets its own random
    parameters, applied in one batched ``affine_grid``/``grid_sample`` call on the batch's device.
    ``erase > 0`` hides random grid cells (filled with the image's mean), which makes a network look at
    all of the evidence rather than its single most telling part; class activation maps then cover
    objects better (Singh & Lee 2017, "Hide-and-Seek").
    """

    rotation: float = 7.0  # degrees, +/-
    translate: float = 0.06  # fraction of the image size, +/-
    zoom: float = 0.08  # scale in [1 - zoom, 1 + zoom]
    brightness: float = 0.15  # multiply by [1 - b, 1 + b]
    contrast: float = 0.15  # scale deviations from the image's mean by [1 - c, 1 + c]
    flips: bool = False  # random horizontal flips
    erase: float = 0.0  # "hide-and-seek": probability of hiding each cell of an erase_grid x erase_grid grid
    erase_grid: int = 4
    gamma: float = 0.0  # x ** g with log g in [-gamma, gamma]
    fill: str = "reflection"  # one of FILLS
    blur: float = 0.0  # Gaussian blur with sigma in [0, blur] pixels (another scanner's sharpness)

    def __call__(self, x: "torch.Tensor", generator: "torch.Generator | None" = None) -> "torch.Tensor":
        """Augment (C, H, W) or (N, C, H, W) float tensors in [0, 1]; returns the same shape, in [0, 1]."""
        single = x.ndim == 3
        if single:
            x = x[None]
        if self.rotation or self.translate or self.zoom or self.flips:
            x = self._geometry(x, generator)
        x = self._intensity(x, generator)
        if self.blur > 0:
            x = self._blur(x, generator)
        if self.erase > 0:
            x = self._hide(x, generator)
        return x[0] if single else x

    @staticmethod
    def _uniform(n: int, lo: float, hi: float, generator, device) -> "torch.Tensor":
        """(n,) uniform samples drawn on the CPU (reproducible on any device), moved to ``device``."""
        import torch

        return torch.rand(n, generator=generator, device="cpu").mul_(hi - lo).add_(lo).to(device)

    def _geometry(self, x: "torch.Tensor", generator) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, not {self.fill!r}")
        n, dev = x.shape[0], x.device
        ang = torch.deg2rad(self._uniform(n, -self.rotation, self.rotation, generator, dev))
        scale = self._uniform(n, 1 - self.zoom, 1 + self.zoom, generator, dev)
        tx = self._uniform(n, -self.translate, self.translate, generator, dev) * 2
        ty = self._uniform(n, -self.translate, self.translate, generator, dev) * 2
        flip = torch.ones(n, device=dev)
        if self.flips:
            flip = torch.where(self._uniform(n, 0, 1, generator, dev) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.fill, align_corners=False)

    def _intensity(self, x: "torch.Tensor", generator) -> "torch.Tensor":
        n, dev = x.shape[0], x.device

        def factor(amount: float) -> "torch.Tensor":  # (n, 1, 1, 1) in [1 - amount, 1 + amount]
            return self._uniform(n, 1 - amount, 1 + amount, generator, dev).view(n, 1, 1, 1).to(x.dtype)

        if self.gamma:
            g = self._uniform(n, -self.gamma, self.gamma, generator, dev).exp_().view(n, 1, 1, 1).to(x.dtype)
            x = x.clamp(0.0, 1.0).pow(g)
        if self.brightness:
            x = x * factor(self.brightness)
        if self.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor(self.contrast) + mean
        return x.clamp(0.0, 1.0)

    def _blur(self, x: "torch.Tensor", generator) -> "torch.Tensor":
        """Each image blurred by its own Gaussian (sigma uniform in [0, blur] px; 0 leaves it as is), as one
        grouped separable convolution with reflected borders."""
        import torch
        import torch.nn.functional as F

        n, c, h, w = x.shape
        sigma = self._uniform(n, 0.0, self.blur, generator, x.device).to(x.dtype)
        r = max(1, int(round(2.5 * self.blur)))
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, 2r + 1)
        y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
        y = F.conv2d(y, k[:, None, None, :], groups=n * c)
        y = F.conv2d(y, k[:, None, :, None], groups=n * c)
        return y.reshape(n, c, h, w)

    def _hide(self, x: "torch.Tensor", generator) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        n, g = x.shape[0], max(1, int(self.erase_grid))
        keep = (torch.rand((n, 1, g, g), generator=generator, device="cpu") >= self.erase).to(x.device, x.dtype)
        keep = F.interpolate(keep, size=x.shape[-2:], mode="nearest")
        fill = x.mean(dim=(1, 2, 3), keepdim=True)
        return x * keep + fill * (1 - keep)


# ----------------------------------------------------------------------------- the torch data set
class ImageDataset:
    """Map-style data set (usable by ``torch.utils.data.DataLoader``) of (input tensor, label).

    Images are read with :func:`read_image` and turned into unit-range (C, S, S) tensors by
    :func:`napari_gradcam.preprocess.image_to_tensor` (the inference preprocessing), optionally
    augmented, then normalised with ``mean``/``std``.  With ``cache`` the decoded, resized images are
    kept in memory as uint8, so only the first pass decodes files (call :meth:`load` to fill it up
    front).  An image that fails to decode later is replaced by another image of the same class and
    recorded in :attr:`failed`.
    """

    def __init__(
        self,
        data: ImageFolderData,
        in_channels: int,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augmentation | Callable | None = None,
        cache: bool | None = None,
        normalise: bool = True,
    ) -> None:
        import torch

        self.data = data
        self.in_channels = int(in_channels)
        self.input_size = int(input_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.transform = augment
        self.normalise_output = bool(normalise)
        nbytes = len(data) * self.in_channels * self.input_size**2
        self.cache_enabled = bool(nbytes <= CACHE_LIMIT_BYTES) if cache is None else bool(cache)
        self._cache: "torch.Tensor | None" = None
        self._filled: np.ndarray | None = None
        self.failed: list[tuple[Path, str]] = []
        self.labels = data.labels

    def __len__(self) -> int:
        return len(self.data)

    def _decode(self, i: int) -> "torch.Tensor":
        """Unit-range (C, S, S) float32 tensor of item i, read from disk."""
        from ..preprocess import check_image, image_to_tensor

        img = check_image(read_image(self.data.items[i].path))
        c = self.in_channels
        return image_to_tensor(img, c, self.input_size, [0.0] * c, [1.0] * c)

    def _substitute(self, i: int, err: Exception) -> int:
        path = self.data.items[i].path
        if all(p != path for p, _ in self.failed):
            self.failed.append((path, str(err)))
        same = np.flatnonzero(self.labels == self.labels[i])
        bad = {p for p, _ in self.failed}
        ok = [j for j in same if self.data.items[j].path not in bad]
        if not ok:
            raise DatasetError(f"No image of class {self.data.classes[self.labels[i]]!r} could be read.") from None
        return int(ok[(i * 7919) % len(ok)])

    def unit(self, i: int) -> "torch.Tensor":
        """Unit-range (C, S, S) float32 tensor of item i, before augmentation and normalisation."""
        import torch

        if not self.cache_enabled:
            while True:
                try:
                    return self._decode(i)
                except (ImageError, DatasetError, OSError) as e:
                    i = self._substitute(i, e)
        if self._cache is None:
            self._cache = torch.zeros((len(self), self.in_channels, self.input_size, self.input_size), dtype=torch.uint8)
            self._filled = np.zeros(len(self), dtype=bool)
        j = i
        while not self._filled[j]:
            try:
                self._cache[j] = self._decode(j).mul_(255.0).round_().to(torch.uint8)
                self._filled[j] = True
            except (ImageError, DatasetError, OSError) as e:
                j = self._substitute(j, e)
        if j != i:  # an unreadable image stands in for by another of its class from now on
            self._cache[i] = self._cache[j]
            self._filled[i] = True
        return self._cache[i].float().div_(255.0)

    def load(self, threads: int | None = None) -> Iterator[tuple[int, int]]:
        """Decode every image into the cache, yielding (done, total) every 64 images (no-op without cache).

        Decoding runs in ``threads`` threads (default: the CPU count, at most 8; Pillow and torch release
        the GIL); stopping the iteration stops after the current chunk.
        """
        import os
        from concurrent.futures import ThreadPoolExecutor

        import torch

        n = len(self)
        if not self.cache_enabled or n == 0:
            return
        self.unit(0)  # allocates the cache
        threads = threads or min(8, os.cpu_count() or 1)

        def decode(i: int):
            try:
                return self._decode(i).mul_(255.0).round_().to(torch.uint8)
            except (ImageError, DatasetError, OSError) as e:
                return e

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(0, n, 64):
                todo = [i for i in range(start, min(n, start + 64)) if not self._filled[i]]
                for i, res in zip(todo, pool.map(decode, todo)):
                    if isinstance(res, Exception):
                        self.unit(i)  # records the failure and fills in a substitute of the same class
                    else:
                        self._cache[i] = res
                        self._filled[i] = True
                yield min(n, start + 64), n

    def normalise(self, x: "torch.Tensor") -> "torch.Tensor":
        return (x - self.mean) / self.std

    @property
    def fully_cached(self) -> bool:
        return self._cache is not None and bool(self._filled.all())

    def cached_batch(self, indices: Sequence[int]) -> "torch.Tensor":
        """(B, C, S, S) uint8 images from the filled cache (unit range x 255)."""
        import torch

        return self._cache[torch.as_tensor(np.asarray(indices), dtype=torch.long)]

    def __getitem__(self, i: int) -> tuple["torch.Tensor", int]:
        """(C, S, S) float32 tensor (augmented, then normalised unless ``normalise=False``) and the label."""
        x = self.unit(int(i))
        if self.transform is not None:
            x = self.transform(x)
        return (self.normalise(x) if self.normalise_output else x), int(self.labels[int(i)])

    def tensors(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """All images (no augmentation) as one normalised (N, C, S, S) float32 tensor, and (N,) labels."""
        import torch

        xs = torch.stack([self.normalise(self.unit(i)) for i in range(len(self))]) if len(self) else torch.zeros(0)
        return xs, torch.as_tensor(self.labels, dtype=torch.long)
