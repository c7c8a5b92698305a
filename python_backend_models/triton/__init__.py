"""Triton Python-backend adapters: thin classes that turn Triton requests into calls of the pure cores.

Each generated ``model.py`` is one line importing one of these as ``TritonPythonModel``.
"""
