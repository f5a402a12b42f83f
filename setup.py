"""Builds csessions._core. The libraries come from Debian packages; a missing one stops the
build with the package to install, before the compiler gets to print a backtrace."""

import os
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# (header, library, Debian package)
REQUIRED = [
    ("sodium.h", "sodium", "libsodium-dev"),
    ("simdjson.h", "simdjson", "libsimdjson-dev"),
    ("zlib.h", "z", "zlib1g-dev"),
    ("openssl/sha.h", "crypto", "libssl-dev"),
]

SOURCES = ["src/module.c", "src/json_encode.c", "src/json_decode.c", "src/codec.c",
           "src/hmac.c", "src/deflate_quick.c", "src/pack.c", "src/shm.c", "src/fileio.c", "src/simdjson_wrap.cpp",
           "src/float_repr.cpp"]

# CSESSIONS_WERROR=1: warnings are errors (CI). CSESSIONS_DEBUG=1: asserts on, -O0.
# CSESSIONS_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer, any report aborts.
WERROR = os.environ.get("CSESSIONS_WERROR") == "1"
DEBUG = os.environ.get("CSESSIONS_DEBUG") == "1"
SANITIZE = os.environ.get("CSESSIONS_SANITIZE") == "1"


# float_repr.cpp needs std::to_chars for double: libstdc++ of GCC 11 or later.
TO_CHARS_PROBE = ("#include <charconv>\nint main(void) { char b[32]; double d = 0.5;\n"
                  "  return std::to_chars(b, b + 32, d, std::chars_format::scientific).ptr == b; }\n")


def _probe(compiler, header, lib, src=None):
    """True if `#include <header>` (or src) compiles and links against -l<lib>."""
    src = src or f"#include <{header}>\nint main(void) {{ return 0; }}\n"
    cxx = header in ("simdjson.h", "charconv")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.cpp" if cxx else "probe.c")
        with open(path, "w") as f:
            f.write(src)
        cc = os.environ.get("CXX", "g++") if cxx else os.environ.get("CC", "gcc")
        cmd = [cc, path, "-o", os.path.join(tmp, "probe"), f"-l{lib}"]
        if cxx:
            cmd.insert(1, "-std=c++17")
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except FileNotFoundError:  # no compiler at all
            sys.exit(f"csessions: cannot build, no {cc} found. As root, run:\n"
                     "    apt-get install build-essential")


class BuildExt(build_ext):
    def build_extensions(self):
        missing = [pkg for header, lib, pkg in REQUIRED if not _probe(self.compiler, header, lib)]
        if missing:
            sys.exit(
                "csessions: cannot build, missing system libraries. As root, run:\n"
                f"    apt-get install {' '.join(missing)}\n"
                "(or simply `make test`, which installs them)"
            )
        if not _probe(self.compiler, "charconv", "stdc++", TO_CHARS_PROBE):
            sys.exit("csessions: cannot build, the C++ compiler lacks std::to_chars for double "
                     "(g++ 11 or later; Debian 12 has 12)")
        # The C++ wrappers need C++17; the C sources must not see that flag.
        original = self.compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            extra = list(extra_postargs)
            if src.endswith(".cpp"):
                extra = [a for a in extra if not a.startswith("-std=")] + ["-std=c++17"]
            original(obj, src, ext, cc_args, extra, pp_opts)

        self.compiler._compile = _compile
        build_ext.build_extensions(self)


cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-fvisibility=hidden"]
ldflags = []
macros = [("OPENSSL_SUPPRESS_DEPRECATED", "1")]
if WERROR:
    cflags.append("-Werror")
if DEBUG or SANITIZE:
    cflags += ["-O0", "-g3", "-UNDEBUG"]
    macros.append(("CSESSIONS_DEBUG", "1"))
else:
    cflags += ["-O2"]
if SANITIZE:
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    cflags += san
    ldflags += san

setup(
    ext_modules=[
        Extension(
            "csessions._core",
            sources=SOURCES,
            depends=[os.path.join("src", f) for f in os.listdir("src") if f.endswith(".h")]
            if os.path.isdir("src") else [],
            libraries=["sodium", "simdjson", "z", "crypto", "stdc++", "m"],
            define_macros=macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
