"""scikit-learn's bundled handwritten digits as train/validation loaders.

Kept apart from the models so that reading the data size (``kiwi-optim preview``) does not
import Lightning.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..integrations.lightning.resumable import ResumableDataLoader


class DigitsDataModule:
    """Train/validation split of the digits, as rows of pixels (8 tokens of 8 features).

    A plain class with ``setup``/``train_dataloader``/``val_dataloader``: the stage hands its
    loaders to whichever Lightning flavor the model uses.
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, limit: int | None = None):
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.init_args.val_fraction: {val_fraction!r} is outside (0, 1); use e.g. 0.2")
        if batch_size < 1:
            raise ValueError(f"data.init_args.batch_size: {batch_size!r} is below 1; use e.g. 64")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.limit = limit
        self.train: TensorDataset | None = None
        self.val: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        if self.limit:
            order = order[: self.limit]
        n_val = max(1, int(round(len(order) * self.val_fraction)))
        val, train = order[:n_val], order[n_val:]
        self.train = TensorDataset(images[train], labels[train])
        self.val = TensorDataset(images[val], labels[val])

    @property
    def train_size(self) -> int:
        self.setup()
        return len(self.train)

    def train_dataloader(self) -> DataLoader:
        # Resumable: a run restored from a mid-epoch checkpoint sees the batches it would have seen.
        self.setup()
        generator = torch.Generator().manual_seed(self.seed)
        return ResumableDataLoader(self.train, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        # Its own generator: creating its iterator then draws nothing from the global RNG, so
        # validation does not shift the dropout masks of the steps after it.
        return DataLoader(self.val, batch_size=256, generator=torch.Generator().manual_seed(self.seed))
