"""Shared defaults; every other config starts from these."""

from csm_jax.config_base import default_config


def get_config():
  return default_config()
