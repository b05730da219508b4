"""Build and install liveavatar_rt.

The package is `liveavatar_rt` plus the top-level `kernels/` folder (Triton kernels), which is
installed as the subpackage `liveavatar_rt.kernels` (never as a top-level `kernels`, a name
taken on PyPI). The C++ ops build into `liveavatar_rt._C`:

- always: csrc/torch_bindings.cpp + csrc/cpu/*.cpp (CppExtension);
- where torch has CUDA and CUDA_HOME is set: also csrc/cuda/*.cu (CUDAExtension);
- LIVEAVATAR_RT_NO_EXT=1: no extension (the package runs on its PyTorch references).

torch must already be installed (pip install torch==2.13.0) and the build run without
isolation (`pip install --no-build-isolation -e .`): an isolated build would fetch a
different, multi-GB torch.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extensions():
    # Read here (the build runs before the package is importable); listed in liveavatar_rt/envvars.py.
    if os.environ.get("LIVEAVATAR_RT_NO_EXT", "") not in ("", "0"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/torch_bindings.cpp"] + _rel("csrc/cpu/*.cpp")
    # -ffp-contract=off: no fused multiply-add, so results round as the PyTorch references do.
    cxx = ["-O3", "-ffp-contract=off"]
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline OpenMP: without -fopenmp it runs on one thread. The
        # runtime is libgomp.so.1, already loaded by torch, so there is one thread pool.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    kwargs = dict(
        name="liveavatar_rt._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=link,
        py_limited_api=False,
    )
    if torch.version.cuda and CUDA_HOME:
        ext = CUDAExtension(
            sources=sources + _rel("csrc/cuda/*.cu"),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--fmad=false"]},
            **kwargs,
        )
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="liveavatar_rt",
    version="0.1.0",
    description="Kernel-accelerated inference runtime for the Live Avatar streaming avatar model",
    python_requires=">=3.10",
    packages=find_packages(include=["liveavatar_rt", "liveavatar_rt.*"]) + ["liveavatar_rt.kernels"],
    package_dir={"liveavatar_rt.kernels": "kernels"},
    # the bundled trained tiny model and the server's web page travel with the package
    package_data={"liveavatar_rt": ["weights/*.safetensors"], "liveavatar_rt.serve": ["static/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch==2.13.0",
        "numpy",
        "safetensors",
        "tqdm",
        "av",
        "pillow",
    ],
    extras_require={
        "gpu": ["triton==3.7.1", "flash-attn"],
        "test": ["pytest", "pytest-benchmark", "transformers==5.23.0", "sentencepiece==0.2.3"],
        # the 14B front ends: umT5 tokenizer and wav2vec2 (published layout directories)
        "published": ["transformers>=4.51", "sentencepiece"],
        "serve": ["fastapi==0.163.2", "starlette==1.10.0", "uvicorn==0.54.0", "websockets==17.4",
                  "prometheus-client==0.26.0"],
        "eval": ["matplotlib==3.11.2"],
    },
    entry_points={"console_scripts": ["liveavatar-rt = liveavatar_rt.cli:main"]},
    zip_safe=False,
)
