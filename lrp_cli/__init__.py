"""lrp-cli: explain PyTorch image classifiers with Layer-wise Relevance Propagation.

Importing this package is cheap (no torch); the engine lives in ``lrp_cli.engine``.
"""

__version__ = "0.1.0"
