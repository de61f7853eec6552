"""Beam PTransforms and DoFns: the adapters between the pure logic in
``filters/`` and the pipeline assembled in ``pipeline/``."""
