"""The default task: scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels).

The data ship inside scikit-learn, so the pipeline runs offline. The classifiers keep their
feature extractor in an ``encoder`` submodule, so ``encoder_learning_rate`` has something to
apply to, and expose ``model_size`` (d_model) for the noam schedule.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torch.nn import functional as F

from ..integrations.lightning import KiwiOptimizers
from .digits_data import DigitsDataModule

__all__ = ["DigitsDataModule", "DigitsTransformer", "DigitsMLP"]


class _Classifier(KiwiOptimizers, L.LightningModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True, sync_dist=True)


class DigitsTransformer(_Classifier):
    """A small Transformer encoder over the 8 pixel rows, mean-pooled, then a linear head."""

    def __init__(self, d_model: int = 32, nhead: int = 4, num_layers: int = 2, dim_feedforward: int = 64,
                 dropout: float = 0.1, num_classes: int = 10):
        super().__init__()
        self.save_hyperparameters()
        self.model_size = d_model
        self.encoder = _RowEncoder(d_model, nhead, num_layers, dim_feedforward, dropout)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images).mean(dim=1))


class _RowEncoder(nn.Module):
    def __init__(self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.position = nn.Parameter(torch.zeros(8, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.embed(images) + self.position)


class DigitsMLP(_Classifier):
    """A two-layer perceptron on the 64 pixels; its hidden layers are the ``encoder``."""

    def __init__(self, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.save_hyperparameters()
        self.model_size = hidden
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))
