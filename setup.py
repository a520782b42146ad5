"""csm_jax: autoregressive score matching (Meng et al., NeurIPS 2020) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="csm_jax",
    version="0.1.0",
    description="Autoregressive conditional score models trained by composite score matching",
    packages=find_packages(include=["csm_jax", "csm_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10",
        "tensorflow-datasets>=4.9.7",
        "array_record>=0.5",   # tfds.data_source reads array_record without TensorFlow
        "etils[epath,epy]",
        "ml-collections>=0.1.1",
        "absl-py",
        "chex>=0.1.87",
        "numpy",
        "matplotlib",
        "pillow",
        "tensorboardX",        # TensorBoard event files without TensorFlow
        "scipy",               # classical denoising baselines (median, Gaussian filters)
        "dm-pix>=0.4",         # PSNR / SSIM of restorations
        "scikit-learn",        # AUROC of out-of-distribution statistics
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel"],
        # tfds needs TensorFlow only to download and prepare a dataset the first time.
        "prepare": ["tensorflow-cpu"],
    },
)
