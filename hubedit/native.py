"""Compile and load the project's C++ kernels: once per machine, with the system C++ compiler.

The zoo trainer (:mod:`hubedit.zoo.fused`) and the metanetwork's inference pass
(:mod:`hubedit.metanet.edge_kernel`) each ship C++ sources next to their module. :func:`load` compiles them
with ``-O3 -march=native`` (GCC or Clang with C++20, x86-64 Linux) into ``$HUBEDIT_KERNEL_CACHE`` (default
``~/.cache/hubedit/kernels``), once per source, compiler, flags and CPU, and loads the shared library with
``ctypes``. ``HUBEDIT_FUSED_KERNELS=0`` turns every kernel off; where no compiler is found or a build fails,
the callers run their torch formulations (the references the kernels are tested against).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

#: compile flags: vectorised loops (libmvec's expf / erff / tanhf need -ffast-math); shared libraries are
#: linked without -ffast-math so that loading one does not switch the process to flush-to-zero
COMPILE = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp-simd", "-fPIC", "-std=c++20"]


#: the activation and norm codes of ``hubedit/zoo/kernels/layer_kernels.h``, shared by every kernel that includes it
NORM_CODES = {"none": 0, "batchnorm": 1, "layernorm": 2}
ACT_CODES = {"relu": 0, "leaky_relu": 1, "gelu": 2, "silu": 3, "tanh": 4, "sigmoid": 5}


def enabled() -> bool:
    """False where ``HUBEDIT_FUSED_KERNELS=0`` turns the kernels off."""
    return os.environ.get("HUBEDIT_FUSED_KERNELS", "1") != "0"


def cache_dir() -> Path:
    return Path(os.environ.get("HUBEDIT_KERNEL_CACHE") or Path.home() / ".cache" / "hubedit" / "kernels")


def compiler() -> str | None:
    """The system C++ compiler, or None."""
    return next((shutil.which(c) for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def cpu_flags() -> bytes:
    """This CPU's feature flags (``-march=native`` code is only valid where they are the same)."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith(b"flags")), b"")
    except OSError:
        return b""


def build(name: str, cxx: str, sources: Sequence[Path], headers: Sequence[Path] = (), link: Sequence[str] = ()) -> Path:
    """Compile ``sources`` into one shared library ``<name>-<key>.so`` in :func:`cache_dir` and return its path
    (the cached file when the key, a hash of sources, headers, compiler, flags and CPU, matches). Written to a
    temporary name and renamed, so that concurrent processes never load a half-written file. Raises
    RuntimeError with the compiler's message when a step fails."""
    link = ["-shared", *link]
    ident = [*(f.read_bytes() for f in (*sources, *headers)), cxx.encode(), " ".join(COMPILE + link).encode(), cpu_flags()]
    key = hashlib.sha256(b"\0".join(ident)).hexdigest()[:16]
    lib = cache_dir() / f"{name}-{key}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        objs = [str(Path(tmp) / f"{src.stem}.o") for src in sources]
        out = Path(tmp) / f"{name}.so"
        cmds = [[cxx, *COMPILE, "-c", str(src), "-o", obj] for src, obj in zip(sources, objs)]
        for cmd in cmds + [[cxx, *objs, "-o", str(out), *link]]:
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
        os.replace(out, lib)
    return lib


def load(name: str, cxx: str, sources: Sequence[Path], headers: Sequence[Path] = (), link: Sequence[str] = ()) -> ctypes.CDLL:
    """:func:`build` and load with ``ctypes`` (OSError or RuntimeError where that fails)."""
    return ctypes.CDLL(str(build(name, cxx, sources, headers, link)))


def load_or_warn(what: str, name: str, cxx: str | None, sources: Sequence[Path], headers: Sequence[Path] = (),
                 link: Sequence[str] = ()) -> ctypes.CDLL | None:
    """:func:`load`, or None where the kernels are turned off (:func:`enabled`), no compiler ``cxx`` was found,
    or the build or load fails -- then with a warning ``"<what> unavailable, using torch ops instead: ..."``."""
    if not enabled() or cxx is None:
        return None
    try:
        return load(name, cxx, sources, headers, link)
    except (OSError, RuntimeError) as exc:
        warnings.warn(f"{what} unavailable, using torch ops instead: {exc}")
        return None
