"""Model registry: `get_model(config, data_shape)` builds an `ARModel` from config.model."""

import math

from csm_jax.models import heads as heads_lib
from csm_jax.models import made as made_lib
from csm_jax.models.ar import ARModel, ARNet

_BACKBONES = {}
_HEADS = {}


def register_backbone(name):
  def wrap(fn):
    _BACKBONES[name] = fn
    return fn
  return wrap


def register_head(name):
  def wrap(fn):
    _HEADS[name] = fn
    return fn
  return wrap


@register_backbone("made")
def _made(cfg, data_shape):
  dim = math.prod(data_shape)
  return made_lib.MADE(dim=dim, hidden_sizes=tuple(cfg.hidden_sizes),
                       context_size=cfg.context_size, order=cfg.get("order", "natural"),
                       order_seed=cfg.get("order_seed", 0)), made_lib.variable_order(
                           dim, cfg.get("order", "natural"), cfg.get("order_seed", 0)), False


@register_backbone("pixelcnnpp")
def _pixelcnnpp(cfg, data_shape):
  from csm_jax.models import pixelcnnpp  # imported lazily: optional, heavier module
  if len(data_shape) != 3:
    raise ValueError(f"pixelcnnpp needs image data (H, W, C), got shape {data_shape}")
  net = pixelcnnpp.PixelCNNPP(image_shape=tuple(data_shape), context_size=cfg.context_size,
                              nr_filters=cfg.get("nr_filters", 160),
                              nr_resnet=cfg.get("nr_resnet", 5),
                              num_scales=cfg.get("num_scales", 3),
                              dropout_rate=cfg.get("dropout_rate", 0.5))
  import numpy as np
  return net, np.arange(math.prod(data_shape)), cfg.get("dropout_rate", 0.5) > 0


@register_head("score")
def _score_head(cfg):
  return heads_lib.ScoreHead(hidden_sizes=tuple(cfg.get("head_hidden", (64, 64))),
                             scale_by_sigma=cfg.get("scale_by_sigma", True),
                             sigma_embedding=cfg.get("head_sigma_embedding", 0),
                             sigma_film=cfg.get("head_sigma_film", False))


@register_head("gaussian")
def _gaussian_head(cfg):
  return heads_lib.GaussianHead()


@register_head("logistic_mixture")
def _logistic_head(cfg):
  return heads_lib.LogisticMixtureHead(num_mixtures=cfg.get("num_mixtures", 10))


@register_head("discretized_logistic")
def _discretized_logistic_head(cfg):
  """PixelCNN++'s discretized logistic mixture: MLE and bits/dim on 8-bit data only."""
  from csm_jax.models import discretized  # pylint: disable=g-import-not-at-top
  return discretized.DiscretizedLogisticMixtureHead(
      num_mixtures=cfg.get("num_mixtures", 10), num_bins=cfg.get("num_bins", 256))


def get_model(model_config, data_shape) -> ARModel:
  """Builds the AR model named by model_config.backbone and model_config.head."""
  b, h = model_config.backbone, model_config.head
  if b not in _BACKBONES:
    raise ValueError(f"unknown model.backbone {b!r}; known: {sorted(_BACKBONES)}")
  if h not in _HEADS:
    raise ValueError(f"unknown model.head {h!r}; known: {sorted(_HEADS)}")
  backbone, rank, has_dropout = _BACKBONES[b](model_config, tuple(data_shape))
  head = _HEADS[h](model_config)
  return ARModel(net=ARNet(backbone=backbone, head=head), dim=math.prod(data_shape),
                 rank=rank, normalized=bool(getattr(head, "normalized", False)),
                 data_shape=tuple(data_shape), has_dropout=has_dropout)
