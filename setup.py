"""recbole-lumos: LUMOS (contrastive federated sequential recommendation with on-device LLM views) on RecBole.

Install (CPU): ``pip install torch==2.13.0 -e ".[dev]"``. The bounds below are the ones
measured to work with RecBole 1.2.1 (see the README's "Pinned stack" section):
NumPy 2 and pandas 3 break RecBole, setuptools >= 82 breaks ray 2.6.3, and torch is
kept below 2.14 so that a CPU machine does not pull a CUDA build.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="recbole-lumos",
    version="0.1.0",
    description="LUMOS and federated sequential recommendation as a RecBole plugin",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["recbole_lumos", "recbole_lumos.*"]),
    package_data={"recbole_lumos": ["properties/*.yaml", "properties/*/*.yaml", "properties/*/*/*.yaml"]},
    py_modules=["run_recbole_lumos"],
    install_requires=[
        "torch>=2.6,<2.14",
        "recbole==1.2.1",
        "numpy>=1.26,<2",
        "pandas>=2.2,<3",
        "scipy>=1.11,<1.18",
        "setuptools>=70,<82",
        "ray==2.6.3",
        "pytorch-lightning>=2.5,<2.7",
        "transformers>=5.0,<5.25",
        "peft>=0.17,<0.22",
        "accelerate>=1.0",
        "gguf>=0.10",
        "sentence-transformers>=6.2,<7",  # loads the item encoder (all-MiniLM-L6-v2) with its own pooling
        "tqdm",
        "pyyaml",
        "opacus>=1.5,<1.7",  # its RDP accountant reports local DP's (epsilon, delta); torch stays as pinned above
    ],
    extras_require={
        "plot": ["matplotlib>=3.8"],
        "flower": ["flwr==1.42.0"],  # the Message API (flwr.app, clientapp, serverapp); no Ray extra
        # The tests draw the comparison plots and drive the Flower app through Flower's own ClientApp.
        "dev": ["pytest>=8", "ruff>=0.6", "matplotlib>=3.8", "flwr==1.42.0"],
    },
    entry_points={"console_scripts": ["recbole-lumos=recbole_lumos.cli:main"]},
)
