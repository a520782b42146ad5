"""csm_jax: autoregressive conditional score models trained by composite score matching.

Meng, Yu, Song, Song, Ermon, "Autoregressive Score Matching", NeurIPS 2020.
"""

__version__ = "0.1.0"
