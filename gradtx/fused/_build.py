"""Compiling, caching, verifying and loading the C++ kernel (`_kernel.cc`)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax

SOURCE = Path(__file__).with_name("_kernel.cc")
# The FFI target of each kernel, by the kind of chain it runs, and the symbol
# of `_kernel.cc` that holds its handler.
TARGETS = {"adam": "gradtx_fused_adam", "sgd": "gradtx_fused_sgd"}
_SYMBOLS = {"adam": "GradtxFusedAdam", "sgd": "GradtxFusedSgd"}
FLAGS = (
    "-O3",
    "-march=native",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-pthread",
    "-ffp-contract=off",  # fused multiply-adds only where the source says
    "-fno-math-errno",  # lets sqrt vectorise; results are unchanged
)

_lock = threading.Lock()
_loaded: list[str | None] = []  # filled once: the library's path, or None


def cache_dir() -> Path:
    """Where built libraries are kept: `$GRADTX_CACHE_DIR`, else the user's cache."""
    if "GRADTX_CACHE_DIR" in os.environ:
        return Path(os.environ["GRADTX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gradtx"


def compiler() -> str | None:
    """The C++ compiler to build with; None if there is none.

    `$CXX` when it is set (and not empty), else the first of `c++`, `g++`
    and `clang++` on the PATH.

    Raises:
        RuntimeError: If `$CXX` is set but names no executable: a compiler
            the user chose is not silently replaced by another.
    """
    chosen = os.environ.get("CXX")
    if chosen:
        if shutil.which(chosen) is None:
            raise RuntimeError(f"$CXX={chosen} is not an executable")
        return chosen
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(("model name", "flags", "Features"))
    ]
    return "\n".join(sorted(set(lines)))


def library_path(compiler: str) -> Path:
    """Where the library built by `compiler` from this source is cached.

    The name changes with everything the library depends on: the source, the
    compiler and its flags, the jax version and the CPU.
    """
    key = hashlib.sha256(
        b"\0".join(
            [
                SOURCE.read_bytes(),
                " ".join([compiler, *FLAGS]).encode(),
                jax.__version__.encode(),
                platform.machine().encode(),
                _cpu_signature().encode(),
            ]
        )
    ).hexdigest()[:16]
    return cache_dir() / f"gradtx_fused_{key}.so"


def build(compiler: str) -> Path:
    """The cached library, compiled first unless a verified one is there.

    Raises:
        RuntimeError: If the compiler fails, with the end of its messages.
    """
    target = library_path(compiler)
    if verified(target):
        return target
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    include = jax.ffi.include_dir()
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        partial = Path(tmp) / target.name
        command = [compiler, *FLAGS, "-isystem", include, str(SOURCE), "-o"]
        result = subprocess.run(
            [*command, str(partial)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed:\n{result.stderr.strip()[-2000:]}"
            )
        _sync(partial)
        digest = Path(tmp) / checksum_path(target).name
        digest.write_text(f"{_sha256(partial)}  {target.name}\n")
        _sync(digest)
        # Each rename is atomic, so concurrent builds are harmless; a reader
        # that comes between the two finds the checksum stale and builds again.
        os.replace(partial, target)
        os.replace(digest, checksum_path(target))
        _sync(directory)
    return target


def checksum_path(library: Path) -> Path:
    """Where the SHA-256 of a cached library is kept: next to it."""
    return library.with_name(library.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sync(path: Path) -> None:
    """Flush a file (or a directory's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verified(library: Path) -> bool:
    """Whether `library` is the file a finished build wrote, byte for byte.

    Loading a damaged library is not an error that can be caught: a file cut
    short (a crash or a full disk before its blocks reached the disk, a
    partial copy of the cache) kills the process with SIGBUS inside
    `ctypes.CDLL`. A build writes the library's SHA-256 next to it, both
    flushed to disk before they are renamed into place; a library whose
    checksum is missing or differs is built again.
    """
    try:
        recorded = checksum_path(library).read_text().split()
        return bool(recorded) and recorded[0] == _sha256(library)
    except OSError:
        return False


def load() -> str | None:
    """Build, load and register the kernels once; their library's path, or None.

    A failure warns once when JAX's default backend is the CPU, where the
    kernel would have run; elsewhere the plain step is what runs anyway.
    """
    with _lock:
        if not _loaded:
            _loaded.append(_load_once())
        return _loaded[0]


def _load_once() -> str | None:
    try:
        chosen = compiler()
        if chosen is None:
            raise RuntimeError("no C++ compiler found (set $CXX)")
        path = build(chosen)
        library = ctypes.CDLL(str(path))
        for kind, symbol in _SYMBOLS.items():
            jax.ffi.register_ffi_target(
                TARGETS[kind],
                jax.ffi.pycapsule(getattr(library, symbol)),
                platform="cpu",
            )
    except Exception as error:  # noqa: BLE001 - any failure means plain path
        if jax.default_backend() == "cpu":
            warnings.warn(
                "gradtx.fused_step: the CPU kernel is unavailable, running "
                f"the plain step instead ({error})",
                RuntimeWarning,
                stacklevel=5,
            )
        return None
    return str(path)


def kernel_available() -> bool:
    """Whether the fused CPU kernel is built and loaded (building it if need be).

    False when `GRADTX_FUSED=0` is set or the kernel could not be built (a
    warning then says why, once per process): no C++ compiler, a `$CXX`
    that names none, a failed build. Where it is False, `fused_step` runs
    the plain step.

    Examples:
        >>> import warnings
        >>> import gradtx
        >>> with warnings.catch_warnings():  # without a compiler: why not
        ...     warnings.simplefilter("ignore")
        ...     available = gradtx.fused.kernel_available()
        >>> isinstance(available, bool)
        True
    """
    if os.environ.get("GRADTX_FUSED", "1") == "0":
        return False
    return load() is not None
