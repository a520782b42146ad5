"""AR-CSM as a prior for image restoration, and the classical baselines (classical.py)."""
