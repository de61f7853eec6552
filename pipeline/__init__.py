"""Job assembly, options and the ``kosmos`` command line.

Importing this package does not import Beam: ``pipeline.schema`` is read by the
trainer, which must never pull Beam in.
"""
