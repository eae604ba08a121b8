"""A small classifier of scikit-learn's bundled wine data, written against ``pytorch_lightning``."""

import pytorch_lightning as pl
import torch
from torch import nn


class WineClassifier(pl.LightningModule):
    def __init__(self, hidden: int = 16, classes: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(13, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())


BATCH = 32  # the batch size lives in the project's own settings, not in an argument


class WineData(pl.LightningDataModule):
    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed

    def setup(self, stage=None):
        from sklearn.datasets import load_wine

        x, y = load_wine(return_X_y=True)
        x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
        y = torch.tensor(y)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        cut = int(0.8 * len(y))
        self.train_set = torch.utils.data.TensorDataset(x[order[:cut]], y[order[:cut]])
        self.val_set = torch.utils.data.TensorDataset(x[order[cut:]], y[order[cut:]])

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=BATCH, shuffle=True)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val_set, batch_size=BATCH)
