"""Triton kernels live here: one `_<op>_fwd_kernel` (@triton.jit) + `<op>_fwd` launcher per file.

This folder is installed as the subpackage `liveavatar_rt.kernels` (setup.py `package_dir`),
never as a top-level `kernels` module (that name is taken on PyPI).
"""
