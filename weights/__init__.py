"""The zoo's own weights, one Hugging Face Hub model folder per tag, installed as the package data ``zoo._weights``.

Not code: this file makes the folder a package, so ``importlib.resources`` finds it in an installed wheel.
"""
