# The fast path is a cffi extension built at install time; everything else
# is in pyproject.toml. cffi_modules has no pyproject.toml spelling yet.
from setuptools import setup

setup(cffi_modules=["src/tapswitch/fastpath_build.py:ffibuilder"])
