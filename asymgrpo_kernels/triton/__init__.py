"""Triton kernels, one file per pass, each kernel beside its launcher."""
