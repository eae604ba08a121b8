"""No weight decay on biases, 1-D parameters, normalisation layers and a module's own
``no_weight_decay()`` names, as timm and transformers do, in every way groups are formed."""

import pytest
import torch
from torch import nn

from kiwi_pipe_optim import OptimizerConfig, from_config
from kiwi_pipe_optim.param_groups import assign


class Encoder(nn.Module):
    """A small Transformer encoder: embeddings, attention (with ``in_proj_bias``), norms, a head."""

    def __init__(self, d=8, vocab=20):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, 6, d))
        self.layer = nn.TransformerEncoderLayer(d, 2, 16, batch_first=True)
        self.final_norm = nn.RMSNorm(d)

    def no_weight_decay(self):
        return {"pos_embed"}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Linear(8, 3)


DECAYED = {"encoder.embed.weight", "encoder.layer.self_attn.in_proj_weight", "encoder.layer.self_attn.out_proj.weight",
           "encoder.layer.linear1.weight", "encoder.layer.linear2.weight", "head.weight"}
NOT_DECAYED = {"encoder.pos_embed", "encoder.layer.self_attn.in_proj_bias", "encoder.layer.self_attn.out_proj.bias",
               "encoder.layer.linear1.bias", "encoder.layer.linear2.bias", "encoder.layer.norm1.weight",
               "encoder.layer.norm1.bias", "encoder.layer.norm2.weight", "encoder.layer.norm2.bias",
               "encoder.final_norm.weight", "head.bias"}

PATHS = {
    "plain": {},
    "encoder_learning_rate": {"encoder_learning_rate": 1e-4},
    "param_groups": {"param_groups": [{"name": "embeddings", "match": ["encoder.embed", "encoder.pos_embed"],
                                       "lr": 1e-4}, {"name": "head", "match": "head", "lr_scale": 3.0}]},
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_transformer_groups_in_every_path(path):
    cfg = OptimizerConfig(class_name="adamw", learning_rate=1e-3, weight_decay=0.05, **PATHS[path])
    decay = {a.parameter: a.weight_decay for a in assign(Model(), cfg)}
    assert set(decay) == DECAYED | NOT_DECAYED
    assert {n for n, wd in decay.items() if wd == 0.05} == DECAYED
    assert {n for n, wd in decay.items() if wd == 0.0} == NOT_DECAYED
    optimizer = from_config(cfg.model_copy(update={"scheduler": "none"}), Model())
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.05, 0.0}


def test_exclusion_applies_against_the_optimizers_own_default():
    """AdamW decays by 0.01 unless told: the excluded parameters get an explicit 0."""
    cfg = OptimizerConfig(class_name="adamw", learning_rate=1e-3, scheduler="none")
    optimizer = from_config(cfg, Model())
    decays = sorted((len(g["params"]), g.get("weight_decay")) for g in optimizer.param_groups)
    assert decays == [(len(DECAYED), 0.01), (len(NOT_DECAYED), 0.0)]


def test_switching_it_off_decays_everything_like_openkiwi():
    cfg = OptimizerConfig(class_name="adamw", learning_rate=1e-3, weight_decay=0.05, weight_decay_exclude="none")
    assert {a.weight_decay for a in assign(Model(), cfg)} == {0.05}


def test_a_rule_that_sets_weight_decay_wins():
    rules = [{"name": "head", "match": "head", "weight_decay": 0.3}]
    cfg = OptimizerConfig(class_name="adamw", learning_rate=1e-3, weight_decay=0.05, param_groups=rules)
    decay = {a.parameter: a.weight_decay for a in assign(Model(), cfg)}
    assert decay["head.bias"] == decay["head.weight"] == 0.3


def test_an_optimizer_without_weight_decay_gets_no_key():
    cfg = OptimizerConfig(class_name="sparse_adam", learning_rate=1e-3)
    assert {a.weight_decay for a in assign(Model(), cfg)} == {None}
