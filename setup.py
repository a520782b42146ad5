"""csm_jax: autoregressive score matching (Meng et al., NeurIPS 2020) in JAX/Flax."""

from setuptools import find_packages, setup

import pathlib

# The project's public address is to be filled in once it has one (url= below).
setup(
    name="csm_jax",
    version="0.2.0",
    description="Autoregressive conditional score models trained by composite score matching",
    long_description=(pathlib.Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="The csm_jax authors",
    license="Apache-2.0",
    url="",   # to be filled in: the repository's public address
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
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
        "test": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel",
                 "bm3d", "scikit-image", "opencv-python-headless"],
        # The classical restorers of csm_jax.restore.classical (BM3D, scikit-image's
        # denoisers and inpainting, OpenCV's Telea inpainting).
        "restore": ["bm3d", "scikit-image", "opencv-python-headless"],
        # tfds needs TensorFlow only to download and prepare a dataset the first time.
        "prepare": ["tensorflow-cpu"],
        # The TensorBoard viewer (event files are written without it, by tensorboardX).
        "tensorboard": ["tensorboard"],
    },
)
