"""Shared by the PyTorch examples: Fashion-MNIST from IDX files, a small
ResNet-ish CNN, and the training-loop chores every example repeats.

The data are Debian's dataset-fashion-mnist package (gzipped IDX files in
/usr/share/datasets/fashion-mnist); --data or FASHION_MNIST_DIR points
elsewhere.
"""
import gzip
import hashlib
import os
import struct
from typing import Iterator, Tuple

import numpy as np
import torch
from torch import nn

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
             0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
    """One IDX file (optionally gzipped) as an array of its shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("%s: not an IDX file (bad magic)" % path)
    kind, ndim = data[2], data[3]
    if kind not in IDX_TYPES:
        raise ValueError("%s: unknown IDX element type 0x%02x" % (path, kind))
    shape = struct.unpack(">%dI" % ndim, data[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[kind])
    count = int(np.prod(shape))
    offset = 4 + 4 * ndim
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError("%s: %d bytes of data, the header says %s of %s"
                         % (path, len(data) - offset, shape, dtype))
    return np.frombuffer(data, dtype, count, offset).reshape(shape)


def load(split: str = "train",
         directory: str = "") -> Tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 N x 1 x 28 x 28 (mean 0, std 1), labels int64."""
    directory = directory or os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(directory,
                                   prefix + "-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(directory,
                                   prefix + "-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = ((x - 0.2860) / 0.3530).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, rank: int,
            world: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of each global batch of world * batch samples,
    in a fixed order, forever."""
    start = 0
    while True:
        if start + world * batch > len(x):
            start = 0
        first = start + rank * batch
        yield x[first:first + batch], y[first:first + batch]
        start += world * batch


class Block(nn.Module):
    """conv-norm-relu-conv-norm plus the input (projected when the shape
    changes); GroupNorm, so the model has no buffers to keep in sync."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(4, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(4, cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.skip(x))


def make_model(width: int = 16, seed: int = 0) -> nn.Module:
    """A small ResNet for 1 x 28 x 28 images, 10 classes (~80k weights at
    width 16); the same weights for the same seed."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.GroupNorm(4, width),
        nn.ReLU(), Block(width, width, 1), Block(width, 2 * width, 2),
        Block(2 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4 * width, 10))


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal hashes, equal replicas."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             count: int = 2000) -> float:
    """Percent of the first `count` samples classified right."""
    with torch.no_grad():
        predicted = model(x[:count]).argmax(1)
    return 100.0 * float((predicted == y[:count]).float().mean())
