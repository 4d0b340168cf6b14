from setuptools import setup

setup(cffi_modules=["traffic/_ffi_build.py:ffibuilder"])
