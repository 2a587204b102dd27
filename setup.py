from setuptools import setup

# Beam stages this project on Dataflow workers with `--setup_file ./setup.py`; metadata lives in pyproject.toml.
setup()
