#!/usr/bin/env bash
# Installs llama.cpp's Python bindings (llama-cpp-python, which vendors llama.cpp) into the active environment,
# built for a portable x86-64 CPU, and checks that the result runs. Used by `sentinel-bench export` tests and
# `generation: {engine: llama.cpp}`; never part of the default install (docs/EXPORT.md).
#
# Why not `pip install llama-cpp-python`: its default build is GGML_NATIVE=ON, which enables every feature the CPU
# reports (AMX included); on these machines that build dies with SIGILL or segfaults in decode. The flags below
# name the features explicitly instead.
#
# The wheel is cached (~/.cache/sentinel-bench/wheels, or $SENTINEL_WHEEL_CACHE) under a name that holds the
# version and a digest of the flags, so a second run on one machine installs in seconds.
set -euo pipefail
VERSION="0.3.36"
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_OPENMP=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
DIGEST="$(printf '%s %s' "$VERSION" "$FLAGS" | sha256sum | cut -c1-12)"
CACHE="${SENTINEL_WHEEL_CACHE:-$HOME/.cache/sentinel-bench/wheels}/llama-cpp-python-$VERSION-$DIGEST"

fail() { echo "install_llamacpp: $*" >&2; exit 1; }

if ! ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    mkdir -p "$CACHE.partial"
    echo "install_llamacpp: building llama-cpp-python $VERSION (about 3-4 minutes on 2 cores)" >&2
    if ! CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        pip wheel -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -w "$CACHE.partial" \
        >"$CACHE.partial/build.log" 2>&1; then
        fail "the build of llama-cpp-python $VERSION failed; its log is $CACHE.partial/build.log"
    fi
    rm -rf "$CACHE" && mv "$CACHE.partial" "$CACHE"
fi
pip install -q --force-reinstall --no-deps "$CACHE"/llama_cpp_python-*.whl
pip install -q "numpy>=1.20" "diskcache>=5.6.1" "jinja2>=2.11.3" "typing-extensions>=4.5.0"

# The check runs in a child: a build that uses an instruction this CPU lacks kills the process that loads it.
if ! python -m sentinel.export.llamacpp --check; then
    fail "the installed llama.cpp does not run on this machine (see the line above); remove $CACHE and rebuild"
fi
