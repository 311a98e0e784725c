"""lcar-deploy: weakly-supervised object localization with LCAR."""

__version__ = "0.1.0"
