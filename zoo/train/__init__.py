"""Training and evaluation: ``zoo train`` / ``tools/train.py`` and ``zoo validate`` / ``tools/validate.py``."""
