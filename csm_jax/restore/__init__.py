"""AR-CSM as a prior for image restoration: the joint log-density and score, observation
models, posterior samplers (docs/restoration.md), and the classical baselines
(classical.py, imported on its own since it needs the 'restore' extra)."""

from csm_jax.restore import joint  # noqa: F401
from csm_jax.restore import observations  # noqa: F401
from csm_jax.restore import posterior  # noqa: F401
from csm_jax.restore.posterior import restore  # noqa: F401
