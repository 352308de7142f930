from setuptools import setup

# The C core is built by cffi in out-of-line API mode; everything else is in pyproject.toml.
setup(cffi_modules=["bincache/_native/_build.py:ffibuilder"])
