"""Command-line tools a user runs on purpose (`python -m csm_jax.tools.NAME`)."""
