"""Model registry: `get_model(config.model, data_shape)` builds an `ARModel`.

A backbone builder returns a `Backbone` (context network, variable order, dropout); a
head is registered with its `kind`, set once here and nowhere else:
  'score'    an unnormalized conditional score s_d (AR-CSM, trained by CSM, SSM, DSM);
  'density'  a normalized log-density log q(x_d | x_<d) (MLE baselines, exact NLL);
  'mass'     a probability mass over pixel bins (PixelCNN++ discretized logistics).
"""

import dataclasses
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from csm_jax import config_base
from csm_jax.models import heads as heads_lib
from csm_jax.models import made as made_lib
from csm_jax.models.ar import ARModel, ARNet, KINDS  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A context network with its variable order: rank[i] is variable i's position."""
  net: nn.Module
  rank: np.ndarray
  has_dropout: bool = False
  num_masked_weights: int = 0   # kernel entries fixed at zero by masks (MADE)
  context_sigma: bool = False   # the net takes the noise level: net(x, train, sigma=)


@dataclasses.dataclass(frozen=True)
class _Head:
  build: Callable
  kind: str


_BACKBONES = {}
_HEADS = {}


def register_backbone(name: str):
  """Decorator: fn(model_config, data_shape) -> Backbone is the backbone `name`."""
  def wrap(fn):
    if name in _BACKBONES:
      raise ValueError(f"backbone {name!r} is already registered")
    _BACKBONES[name] = fn
    return fn
  return wrap


def register_head(name: str, kind: str):
  """Decorator: fn(model_config) -> head module is the head `name`, of `kind`."""
  if kind not in KINDS:
    raise ValueError(f"head kind must be one of {KINDS}, got {kind!r}")

  def wrap(fn):
    if name in _HEADS:
      raise ValueError(f"head {name!r} is already registered")
    _HEADS[name] = _Head(fn, kind)
    return fn
  return wrap


@register_backbone("made")
def _made(cfg, data_shape) -> Backbone:
  dim = math.prod(data_shape)
  net = made_lib.MADE(dim=dim, hidden_sizes=tuple(cfg.hidden_sizes),
                      context_size=cfg.context_size, order=cfg.order,
                      order_seed=cfg.order_seed, dtype=compute_dtype(cfg),
                      sigma_embedding=context_sigma_embedding(cfg))
  masks = made_lib.made_masks(net.rank, net.hidden_sizes, net.context_size)
  return Backbone(net, net.rank, has_dropout=False,
                  num_masked_weights=int(sum((m == 0).sum() for m in masks)),
                  context_sigma=net.sigma_embedding > 0)


@register_backbone("pixelcnnpp")
def _pixelcnnpp(cfg, data_shape) -> Backbone:
  from csm_jax.models import pixelcnnpp  # imported lazily: optional, heavier module
  if len(data_shape) != 3:
    raise ValueError(f"pixelcnnpp needs image data (H, W, C), got shape {data_shape}")
  net = pixelcnnpp.PixelCNNPP(image_shape=tuple(data_shape), context_size=cfg.context_size,
                              nr_filters=cfg.nr_filters, nr_resnet=cfg.nr_resnet,
                              num_resolutions=cfg.num_resolutions,
                              dropout_rate=cfg.dropout_rate, dtype=compute_dtype(cfg),
                              sigma_embedding=context_sigma_embedding(cfg))
  return Backbone(net, np.arange(math.prod(data_shape)), has_dropout=cfg.dropout_rate > 0,
                  context_sigma=net.sigma_embedding > 0)


@register_head("score", kind="score")
def _score_head(cfg):
  return heads_lib.ScoreHead(hidden_sizes=tuple(cfg.head_hidden),
                             scale_by_sigma=cfg.scale_by_sigma,
                             sigma_embedding=cfg.head_sigma_embedding,
                             sigma_film=cfg.head_sigma_film)


@register_head("gaussian", kind="density")
def _gaussian_head(cfg):
  del cfg
  return heads_lib.GaussianHead()


@register_head("logistic_mixture", kind="density")
def _logistic_head(cfg):
  return heads_lib.LogisticMixtureHead(num_mixtures=cfg.num_mixtures)


@register_head("discretized_logistic", kind="mass")
def _discretized_logistic_head(cfg):
  """PixelCNN++'s discretized logistic mixture: MLE and bits/dim on 8-bit data only."""
  from csm_jax.models import discretized  # pylint: disable=g-import-not-at-top
  return discretized.DiscretizedLogisticMixtureHead(num_mixtures=cfg.num_mixtures,
                                                    num_bins=cfg.num_bins)


def context_sigma_embedding(model_config) -> int:
  """model.context_sigma_embedding (absent in old configs: 0, a context without sigma)."""
  return int(model_config.get("context_sigma_embedding", 0))


def compute_dtype(model_config):
  """The backbone's operand dtype (model.compute_dtype; absent in old configs: float32)."""
  return jnp.dtype(model_config.get("compute_dtype", "float32"))


def backbone_precision(model_config) -> Optional[str]:
  """Matmul precision of the backbone: model.matmul_precision for float32, None (the
  operands' own precision) for bfloat16."""
  if compute_dtype(model_config) != jnp.float32:
    return None
  return model_config.get("matmul_precision", "highest")


def head_kind(model_config) -> str:
  """The kind ('score', 'density' or 'mass') of the head config.model.head names."""
  if model_config.head not in _HEADS:
    raise config_base.ConfigError(f"unknown model.head {model_config.head!r}; known: {sorted(_HEADS)}")
  return _HEADS[model_config.head].kind


def get_model(model_config, data_shape) -> ARModel:
  """Builds the AR model named by model_config.backbone and model_config.head."""
  b = model_config.backbone
  if b not in _BACKBONES:
    raise config_base.ConfigError(f"unknown model.backbone {b!r}; known: {sorted(_BACKBONES)}")
  kind = head_kind(model_config)
  backbone = _BACKBONES[b](model_config, tuple(data_shape))
  if context_sigma_embedding(model_config) and not backbone.context_sigma:
    raise config_base.ConfigError(
        f"model.context_sigma_embedding (a noise-conditional context) is supported by the "
        f"'made' and 'pixelcnnpp' backbones, not model.backbone={b!r}")
  head = _HEADS[model_config.head].build(model_config)
  net = ARNet(backbone=backbone.net, head=head, kind=kind,
              context_sigma=backbone.context_sigma)
  return ARModel(net=net,
                 dim=math.prod(data_shape), rank=backbone.rank, kind=kind,
                 data_shape=tuple(data_shape), has_dropout=backbone.has_dropout,
                 num_masked_weights=backbone.num_masked_weights,
                 backbone_precision=backbone_precision(model_config))


def count_parameters(params, model=None) -> dict:
  """{'parameters': stored entries, 'effective_parameters': those not masked to zero}.

  MADE stores full kernels and multiplies them by fixed binary masks; the masked-out
  entries never affect the model, so comparisons of model size use the effective count.
  """
  total = int(sum(np.prod(a.shape) for a in jax.tree.leaves(params)))
  masked = 0 if model is None else model.num_masked_weights
  return {"parameters": total, "effective_parameters": total - masked}
