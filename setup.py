"""Build of mhc_ops._C against the installed torch.

MHC_BUILD_CUDA=auto (default) compiles the CUDA sources when torch has CUDA and CUDA_HOME
exists, whether or not a GPU is visible; 1 requires them; 0 builds the CPU library only.
TORCH_CUDA_ARCH_LIST defaults to the visible GPUs' architectures, or 9.0 when none is visible.
"""

import glob
import os
import re
import shutil
import subprocess

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    mode = os.environ.get("MHC_BUILD_CUDA", "auto").strip().lower()
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if mode in ("0", "false", "no"):
        return False
    if mode in ("1", "true", "yes"):
        if not available:
            raise SystemExit(
                f"MHC_BUILD_CUDA=1 but torch {torch.__version__} has CUDA {torch.version.cuda} "
                f"and CUDA_HOME is {CUDA_HOME}"
            )
        return True
    if mode != "auto":
        raise SystemExit(f"MHC_BUILD_CUDA must be auto, 0 or 1; got {mode!r}")
    return available


def arch_list() -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    archs = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            archs.append(f"{major}.{minor}")
    arch = ";".join(sorted(set(archs))) or "9.0"
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch  # read by torch's BuildExtension
    return arch


def _gcc_major(cxx: str) -> int | None:
    """Major version of a GCC C++ driver; None for anything else (clang, wrappers)."""
    try:
        text = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
        if "Free Software Foundation" not in text:
            return None
        ver = subprocess.run([cxx, "-dumpversion"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        return int(ver.split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def pick_compilers() -> None:
    """Build with a GCC no newer than the one torch was built with, when one is available.

    On the GPU image CC / CXX name /opt/gcc, a newer GCC than torch's; the extension it built
    crashed inside std::ostream whenever an op formatted an error message, while the same
    sources built with the system /usr/bin/g++ passed the whole suite (H100, 815 tests).
    MHC_CXX (and MHC_CC) force a compiler.
    """
    if os.environ.get("MHC_CXX"):
        os.environ["CXX"] = os.environ["MHC_CXX"]
        os.environ["CC"] = os.environ.get("MHC_CC", os.environ.get("CC", "gcc"))
        return
    m = re.search(r"GCC (\d+)", torch.__config__.show())
    configured = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not m or not configured:
        return
    torch_major, major = int(m.group(1)), _gcc_major(configured.split()[0])
    if major is None or major <= torch_major:
        return
    for alt in dict.fromkeys(filter(None, (shutil.which("g++"), "/usr/bin/g++",
                                           f"/usr/bin/g++-{torch_major}"))):
        alt_major = _gcc_major(alt) if os.path.exists(alt) else None
        if alt_major is not None and alt_major <= torch_major:
            gcc = os.path.join(os.path.dirname(alt), os.path.basename(alt).replace("g++", "gcc"))
            os.environ["CXX"] = alt
            if os.path.exists(gcc):
                os.environ["CC"] = gcc
            print(f"mhc_ops setup: {configured} is GCC {major}, newer than torch's GCC "
                  f"{torch_major}; building with {alt} (MHC_CXX forces a compiler)")
            return


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


pick_compilers()
with_cuda = want_cuda()
archs = arch_list() if with_cuda else ""
sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/core/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
# Default symbol visibility, as torch's own extensions: with -fvisibility=hidden, the GPU image's
# /opt/gcc build of the library crashed inside std::ostream whenever an op formatted an error.
cxx_flags = ["-O3"]
# -prec-div=false: the gate math divides eight times per Sinkhorn round, and IEEE division's
# slow-path branch keeps those divisions from overlapping; on the decode critical path that
# cost ~9 us per call (H100). The fast division is within 2 ulp, far inside SPEC §3's gate bound.
nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-prec-div=false"]
macros = []
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    macros.append(("MHC_WITH_CUDA", None))

Extension = CUDAExtension if with_cuda else CppExtension
ext = Extension(
    name="mhc_ops._C",
    sources=sources,
    include_dirs=[os.path.join(ROOT, "csrc")],
    define_macros=macros,
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else {"cxx": cxx_flags},
    libraries=["cublas", "cublasLt"] if with_cuda else [],
)

class BuildWithInfo(BuildExtension):
    """Builds _C, then writes mhc_ops/_build_info.py next to it (in place, or in build_lib
    for a wheel), so the record always describes the library beside it."""

    def run(self):
        super().run()
        target = os.path.join(ROOT if self.inplace else self.build_lib, "mhc_ops")
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "_build_info.py"), "w") as f:
            f.write(
                "# Written by setup.py at build time.\n"
                f"TORCH_VERSION = {torch.__version__!r}\n"
                f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n"
                f"WITH_CUDA = {with_cuda!r}\n"
                f"CUDA_ARCH_LIST = {archs!r}\n"
                f"GIT_SHA = {git_sha()!r}\n"
            )


setup(ext_modules=[ext], cmdclass={"build_ext": BuildWithInfo.with_options(use_ninja=True)})
