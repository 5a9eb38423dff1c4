from setuptools import find_packages, setup

setup(
    name="fairseq-headprune",
    version="0.1.0",
    description="Which attention heads does a fairseq Transformer need? Head masking, "
    "importance, pruning and removal for fairseq translation models "
    "(Michel et al., 2019, and beyond).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fairseq_headprune", "fairseq_headprune.*"]),
    python_requires=">=3.9",
    install_requires=[
        # fairseq 0.12.2 does not build on Python >= 3.11; ve-fairseq is its wheel build.
        "ve-fairseq>=0.12.3; python_version >= '3.11'",
        "fairseq>=0.12.2; python_version < '3.11'",
        # Install a CPU torch first (README); a range that it satisfies pulls nothing more.
        # >= 2.6: torch.load's safe loader (weights_only=True) is the default there, and
        # every checkpoint this package reads goes through it (fairseq_fixes.py).
        "torch>=2.6",
        "sacremoses>=0.0.53",
        "sacrebleu>=2.3",
        "subword-nmt>=0.3.8",
        "hydra-core>=1.0.7",
        "omegaconf>=2.0.6",
        "matplotlib>=3.5",
        "numpy",
        "scipy>=1.12",  # pearsonr, spearmanr, lsq_linear, isotonic_regression
        "tqdm",
    ],
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3.6", "filelock"]},
    entry_points={
        "console_scripts": ["fairseq-headprune = fairseq_headprune.cli.main:main"],
    },
    include_package_data=True,
)
