"""Build of mhc_ops._C against the installed torch.

MHC_BUILD_CUDA=auto (default) compiles the CUDA sources when torch has CUDA and CUDA_HOME
exists, whether or not a GPU is visible; 1 requires them; 0 builds the CPU library only.
TORCH_CUDA_ARCH_LIST defaults to the visible GPUs' architectures, or 9.0 when none is visible.
"""

import glob
import os
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


def _elf_needed(path: str) -> list[str] | None:
    """DT_NEEDED entries of a 64-bit little-endian ELF shared object; None if unreadable."""
    import struct

    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            return None
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                    for i in range(shnum)]
        for sh in sections:
            if sh[1] != 6:  # SHT_DYNAMIC
                continue
            strtab = sections[sh[6]]  # sh_link: the dynamic string table
            names = []
            for off in range(sh[4], sh[4] + sh[5], 16):
                tag, val = struct.unpack_from("<qQ", data, off)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    start = strtab[4] + val
                    names.append(data[start:data.index(b"\0", start)].decode())
            return names
        return []
    except (OSError, ValueError, IndexError, struct.error):
        return None


def _links_shared_libstdcxx(cxx: str) -> bool | None:
    """Whether cxx links a shared object against the shared libstdc++ (as torch is).

    None when the probe cannot tell (no compiler, not ELF). A driver that resolves -lstdc++ to
    libstdc++.a puts a second copy of the C++ runtime in mhc_ops._C beside the one torch loads.
    """
    import shlex
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        src, lib = os.path.join(d, "probe.cpp"), os.path.join(d, "probe.so")
        with open(src, "w") as f:
            f.write("#include <sstream>\n#include <string>\n"
                    "std::string probe(int v) { std::ostringstream s; s << v; return s.str(); }\n")
        try:
            r = subprocess.run([*shlex.split(cxx), "-shared", "-fPIC", "-o", lib, src],
                               capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        if r.returncode != 0:
            return None
        needed = _elf_needed(lib)
        if needed is None:
            return None
        return any(n.startswith("libstdc++.so") for n in needed)


def pick_compilers() -> None:
    """Build with a C++ compiler that links the shared libstdc++, as torch does.

    On the GPU image CC / CXX name /opt/gcc/bin/g{cc,++}, wrappers whose library path finds
    libstdc++.a first: mhc_ops._C then carried its own copy of the C++ runtime (no libstdc++.so
    in its DT_NEEDED, ~350 locale symbols defined), and every op that formatted an error crashed
    inside std::ostream, where the two runtimes' locale state met. The same sources built with
    /usr/bin/g++ passed the whole suite (H100, 815 tests). So the configured compiler is probed
    with a one-line shared object; if it links libstdc++ statically, the first g++ that links
    it shared is used instead, with a notice. MHC_CXX (and MHC_CC) force a compiler.
    """
    if os.environ.get("MHC_CXX"):
        os.environ["CXX"] = os.environ["MHC_CXX"]
        os.environ["CC"] = os.environ.get("MHC_CC", os.environ.get("CC", "gcc"))
        return
    configured = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not configured or _links_shared_libstdcxx(configured) is not False:
        return
    for alt in dict.fromkeys(filter(None, (shutil.which("g++"), "/usr/bin/g++"))):
        if alt == configured or not os.path.exists(alt) or not _links_shared_libstdcxx(alt):
            continue
        gcc = os.path.join(os.path.dirname(alt), os.path.basename(alt).replace("g++", "gcc"))
        os.environ["CXX"] = alt
        if os.path.exists(gcc):
            os.environ["CC"] = gcc
        print(f"mhc_ops setup: {configured} links libstdc++ statically, which would put a "
              f"second C++ runtime beside torch's; building with {alt} (MHC_CXX forces a "
              f"compiler)")
        return
    print(f"mhc_ops setup: warning: {configured} links libstdc++ statically and no g++ that "
          f"links it shared was found; set MHC_CXX")


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
# -fopenmp: at::parallel_for splits work over threads only where ATen's parallel header sees
# _OPENMP (torch's CPU backend is OpenMP); without it every CPU kernel ran on one thread. The
# GOMP symbols resolve against the libgomp that torch itself loads.
cxx_flags = ["-O3", "-fopenmp"]
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
