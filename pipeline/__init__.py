"""facevae: a reproducible face-VAE pipeline.

The math (``model``, ``losses``, ``train``) imports only torch and numpy; MLflow lives in ``tracking``
and DVC only in ``stages/`` and the Makefile.
"""

__version__ = "0.1.0"
