"""PixelCNN++ context network for autoregressive conditional score models.

Backbone of Salimans, Karpathy, Chen & Kingma, "PixelCNN++: Improving the
PixelCNN with Discretized Logistic Mixture Likelihood and Other Modifications"
(ICLR 2017), used as the context network of AR-CSM (Meng et al., NeurIPS 2020):
`PixelCNNPP(image_shape)(x)[:, d]` depends only on `x[:, :d]` in the flat
raster order with channels innermost, i.e. `x.reshape(B, H, W, C)`.

Causality comes from two streams of shifted convolutions: the vertical stream
`u` sees only rows strictly above a pixel; the horizontal stream `ul` sees
rows above plus the pixels to the left in the same row. A per-pixel head then
adds the current pixel's earlier channels (R -> G -> B) through a strictly
lower-triangular mask over channels.

Noise-conditional context (`sigma_embedding > 0`, smoothed-joint training with
noise.mode='joint'): a learned embedding of log sigma, one level per example, adds a
per-channel bias to every gated ResNet block's first convolution and to the head's
pixel features, as the class embedding of a conditional PixelCNN (van den Oord et al.,
2016) does. sigma is not a pixel, so causality is unchanged.

Weight normalisation (Salimans & Kingma, 2016) is data-independent here:
`w = g * v / ||v||` per output unit, with `g` initialised to one. It is written
out (rather than `nn.WeightNorm`) so that parameters form a plain
`{kernel, scale, bias}` tree and transposed convolutions need no wrapping.
"""

from typing import Any, Optional, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

_DN = ("NHWC", "HWIO", "NHWC")


def concat_elu(x: jax.Array) -> jax.Array:
  """ELU of `[x, -x]` along channels (PixelCNN++ Sec. 2.5); doubles channels."""
  return jax.nn.elu(jnp.concatenate([x, -x], axis=-1))


def shift_down(x: jax.Array) -> jax.Array:
  """Move an NHWC map down one row, filling the top row with zeros."""
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def shift_right(x: jax.Array) -> jax.Array:
  """Move an NHWC map right one column, filling the left column with zeros."""
  return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def _l2_normalize(v: jax.Array, axes, eps: float = 1e-12) -> jax.Array:
  return v * jax.lax.rsqrt(jnp.sum(v * v, axis=axes, keepdims=True) + eps)


class WNConv(nn.Module):
  """Weight-normalised VALID convolution (or transposed convolution), NHWC.

  The caller pads/crops; this keeps the causal shifts explicit.
  """

  features: int
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  transpose: bool = False
  scale_init: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    v = self.param("kernel", nn.initializers.normal(0.05),
                   (kh, kw, x.shape[-1], self.features))
    g = self.param("scale", nn.initializers.constant(self.scale_init),
                   (self.features,))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    w = g * _l2_normalize(v, axes=(0, 1, 2))
    x, w, b = promote_dtype(x, w, b, dtype=self.dtype)
    if self.transpose:
      y = jax.lax.conv_transpose(x, w, self.strides, "VALID",
                                 dimension_numbers=_DN)
    else:
      y = jax.lax.conv_general_dilated(x, w, self.strides, "VALID",
                                       dimension_numbers=_DN)
    return y + b


class NIN(nn.Module):
  """Weight-normalised 1x1 convolution ("network in network")."""

  features: int
  scale_init: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return WNConv(self.features, (1, 1), scale_init=self.scale_init,
                  dtype=self.dtype)(x)


class DownShiftedConv(nn.Module):
  """Conv whose output at row i sees input rows <= i (padding on top only).

  Columns are padded symmetrically, so the field is centred horizontally.
  With `transpose=True`, a stride-2 transposed conv for upsampling: low-res
  row i writes only high-res rows 2i..2i+kh-1, then the map is cropped.
  """

  features: int
  kernel_size: Tuple[int, int] = (2, 3)
  strides: Tuple[int, int] = (1, 1)
  transpose: bool = False
  scale_init: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    conv = WNConv(self.features, self.kernel_size, self.strides,
                  self.transpose, self.scale_init, self.dtype)
    if self.transpose:
      _, h, w, _ = x.shape
      y = conv(x)
      left = (kw - 1) // 2
      return y[:, :h * self.strides[0], left:left + w * self.strides[1]]
    x = jnp.pad(x, ((0, 0), (kh - 1, 0), ((kw - 1) // 2, (kw - 1) // 2),
                    (0, 0)))
    return conv(x)


class DownRightShiftedConv(nn.Module):
  """Conv whose output at (i, j) sees input rows <= i and columns <= j.

  Padding on top and left only. With `transpose=True`, low-res pixel (i, j)
  writes only the high-res block starting at (2i, 2j), then the map is cropped.
  """

  features: int
  kernel_size: Tuple[int, int] = (2, 2)
  strides: Tuple[int, int] = (1, 1)
  transpose: bool = False
  scale_init: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    conv = WNConv(self.features, self.kernel_size, self.strides,
                  self.transpose, self.scale_init, self.dtype)
    if self.transpose:
      _, h, w, _ = x.shape
      return conv(x)[:, :h * self.strides[0], :w * self.strides[1]]
    x = jnp.pad(x, ((0, 0), (kh - 1, 0), (kw - 1, 0), (0, 0)))
    return conv(x)


class GatedResnet(nn.Module):
  """Gated residual block (PixelCNN++ Fig. 2): concat_elu, conv, skip input,
  dropout, conv to 2F, output `x + a * sigmoid(b)`.

  `shifted` chooses the causal conv ('down' for the u stream,
  'down_right' for the ul stream); `skip` is an optional auxiliary input.
  """

  shifted: str = "down"
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: Optional[jax.Array] = None,
               train: bool = False, cond: Optional[jax.Array] = None) -> jax.Array:
    """`cond` (B, E), optional: an embedding (of the noise level) that shifts the first
    convolution's output per channel, the same at every pixel."""
    nf = x.shape[-1]
    if self.shifted == "down":
      conv = lambda f, **kw: DownShiftedConv(f, (2, 3), dtype=self.dtype, **kw)
    elif self.shifted == "down_right":
      conv = lambda f, **kw: DownRightShiftedConv(f, (2, 2), dtype=self.dtype,
                                                  **kw)
    else:
      raise ValueError(f"unknown shifted conv {self.shifted!r}")
    h = conv(nf)(concat_elu(x))
    if cond is not None:
      h = h + nn.Dense(nf, dtype=self.dtype, name="cond")(cond)[:, None, None, :]
    if skip is not None:
      h = h + NIN(nf, dtype=self.dtype)(concat_elu(skip))
    h = concat_elu(h)
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    # Small initial gain so each block starts close to the identity.
    h = conv(2 * nf, scale_init=0.1)(h)
    a, b = jnp.split(h, 2, axis=-1)
    return x + a * jax.nn.sigmoid(b)


class ChannelMaskedHead(nn.Module):
  """Per-pixel MLP: `ctx[i,j,c] = MLP_c(features_ij, x_ij[:c])`.

  Channel c sees the pixel features (which depend only on earlier pixels)
  and the current pixel's channels < c via a strictly lower-triangular mask.
  Weights are separate per channel, computed for all channels by einsum.
  """

  context_size: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: jax.Array, x: jax.Array) -> jax.Array:
    nf, C, K, Hd = feats.shape[-1], x.shape[-1], self.context_size, self.hidden
    init = nn.initializers.normal(0.05)
    v_f = self.param("kernel_feats", init, (nf, C, Hd))
    v_x = self.param("kernel_chan", init, (C, C, Hd))
    g1 = self.param("scale_1", nn.initializers.ones, (C, Hd))
    b1 = self.param("bias_1", nn.initializers.zeros, (C, Hd))
    v_2 = self.param("kernel_out", init, (C, Hd, K))
    g2 = self.param("scale_2", nn.initializers.ones, (C, K))
    b2 = self.param("bias_2", nn.initializers.zeros, (C, K))

    # mask[c_in, c_out] = c_in < c_out: channel c sees channels 0..c-1 only.
    mask = jnp.triu(jnp.ones((C, C), v_x.dtype), k=1)[..., None]
    v_x = v_x * mask
    sq = jnp.sum(v_f * v_f, axis=0) + jnp.sum(v_x * v_x, axis=0)  # (C, Hd)
    inv = g1 * jax.lax.rsqrt(sq + 1e-12)
    w_f, w_x = v_f * inv, v_x * inv
    w_2 = g2[:, None, :] * _l2_normalize(v_2, axes=(1,))
    feats, x, w_f, w_x, b1, w_2, b2 = promote_dtype(
        feats, x, w_f, w_x, b1, w_2, b2, dtype=self.dtype)
    h = (jnp.einsum("bhwf,fck->bhwck", feats, w_f)
         + jnp.einsum("bhwi,ick->bhwck", x, w_x) + b1)
    h = jax.nn.elu(h)
    return jnp.einsum("bhwck,ckn->bhwcn", h, w_2) + b2


class PixelCNNPP(nn.Module):
  """PixelCNN++ (Salimans et al., 2017) as an AR-CSM context network.

  Maps flat images `x: (B, H*W*C)` (raster order, channels innermost) to
  contexts `(B, H*W*C, context_size)`; context d depends only on `x[:, :d]`
  (Meng et al., 2020, Sec. 4). `num_resolutions` resolutions (32 -> 16 -> 8 for 3),
  `nr_resnet` gated blocks per scale in each pass, skip connections from the
  downsampling pass to the upsampling pass.
  """

  image_shape: tuple  # (H, W, C)
  context_size: int = 16   # as config_base: model.context_size
  nr_filters: int = 160
  nr_resnet: int = 5
  num_resolutions: int = 3  # 3 in the paper for 32x32 (32->16->8)
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  # > 0: the context is noise-conditional (noise.mode='joint'): an embedding of this
  # width of log sigma (one level per example) shifts every gated block (module doc)
  sigma_embedding: int = 0

  def _check_config(self):
    if len(self.image_shape) != 3:
      raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape}")
    H, W, C = self.image_shape
    if min(H, W, C) < 1:
      raise ValueError(f"image_shape must be positive, got {self.image_shape}")
    if self.num_resolutions < 1 or self.nr_resnet < 1 or self.nr_filters < 1:
      raise ValueError(
          "num_resolutions, nr_resnet and nr_filters must be >= 1, got "
          f"{self.num_resolutions}, {self.nr_resnet}, {self.nr_filters}")
    if self.context_size < 1:
      raise ValueError(f"context_size must be >= 1, got {self.context_size}")
    f = 2 ** (self.num_resolutions - 1)
    if H % f or W % f:
      raise ValueError(
          f"num_resolutions={self.num_resolutions} halves the image {self.num_resolutions - 1}"
          f" times, so H and W must be divisible by {f}; got H={H}, W={W}")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, sigma=None) -> jax.Array:
    """x: (B, D) flat, D = H*W*C, raster order with channels innermost (i.e.
    x.reshape(B,H,W,C)). Returns context (B, D, context_size). `sigma` (scalar or (B,)):
    the noise level, needed exactly when `sigma_embedding > 0`."""
    self._check_config()
    H, W, C = self.image_shape
    D = H * W * C
    if x.ndim != 2 or x.shape[-1] != D:
      raise ValueError(
          f"PixelCNNPP expects x of shape (B, {D}) for image_shape "
          f"{tuple(self.image_shape)} (D = H*W*C), got {x.shape}")
    B = x.shape[0]
    nf, dt, rate = self.nr_filters, self.dtype, self.dropout_rate
    cond = None
    if self.sigma_embedding:
      if sigma is None:
        raise ValueError("this PixelCNN++ is noise-conditional (sigma_embedding > 0): "
                         "it needs sigma")
      from csm_jax.models import made as made_lib  # pylint: disable=g-import-not-at-top
      cond = made_lib.sigma_features(sigma, B, self.sigma_embedding).astype(dt)
    elif sigma is not None:
      raise ValueError("sigma given to a PixelCNN++ without a noise-conditional context "
                       "(sigma_embedding = 0)")
    img = x.reshape(B, H, W, C)
    img = promote_dtype(img, dtype=dt)[0]
    # A constant ones channel: zero padding of the shifted convs then marks
    # the image border (PixelCNN++ convention).
    xp = jnp.concatenate([img, jnp.ones_like(img[..., :1])], axis=-1)

    # Initial streams; every position sees strictly earlier pixels only.
    u_list = [shift_down(DownShiftedConv(nf, (2, 3), dtype=dt)(xp))]
    ul_list = [shift_down(DownShiftedConv(nf, (1, 3), dtype=dt)(xp))
               + shift_right(DownRightShiftedConv(nf, (2, 1), dtype=dt)(xp))]

    # Downsampling pass ("up pass" in the PixelCNN++ code).
    for s in range(self.num_resolutions):
      for _ in range(self.nr_resnet):
        u_list.append(GatedResnet("down", rate, dt)(u_list[-1], train=train,
                                                    cond=cond))
        ul_list.append(GatedResnet("down_right", rate, dt)(
            ul_list[-1], u_list[-1], train=train, cond=cond))
      if s < self.num_resolutions - 1:
        u_list.append(DownShiftedConv(nf, (2, 3), (2, 2), dtype=dt)(u_list[-1]))
        ul_list.append(DownRightShiftedConv(nf, (2, 2), (2, 2), dtype=dt)(
            ul_list[-1]))

    # Upsampling pass ("down pass"), consuming the skips in reverse order.
    u, ul = u_list.pop(), ul_list.pop()
    for s in range(self.num_resolutions):
      for _ in range(self.nr_resnet + (1 if s > 0 else 0)):
        u = GatedResnet("down", rate, dt)(u, u_list.pop(), train=train, cond=cond)
        ul = GatedResnet("down_right", rate, dt)(
            ul, jnp.concatenate([u, ul_list.pop()], axis=-1), train=train, cond=cond)
      if s < self.num_resolutions - 1:
        u = DownShiftedConv(nf, (2, 3), (2, 2), transpose=True, dtype=dt)(u)
        ul = DownRightShiftedConv(nf, (2, 2), (2, 2), transpose=True,
                                  dtype=dt)(ul)
    assert not u_list and not ul_list, "unconsumed skip connections"
    chex.assert_shape(ul, (B, H, W, nf))

    feats = jax.nn.elu(ul)
    if cond is not None:
      feats = feats + nn.Dense(nf, dtype=dt, name="cond_head")(cond)[:, None, None, :]
    ctx = ChannelMaskedHead(self.context_size, nf, dt)(feats, img)
    ctx = ctx.reshape(B, D, self.context_size)
    ctx = ctx.astype(jnp.promote_types(ctx.dtype, jnp.float32))  # bf16 -> f32 for the head
    chex.assert_shape(ctx, (B, D, self.context_size))
    return ctx
