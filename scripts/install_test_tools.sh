#!/usr/bin/env bash
# What the test suite runs besides the project: llama.cpp's Python bindings (scripts/install_llamacpp.sh, a cached
# portable build) and Chromium with its driver (Debian's packages), which read our GGUF exports and report.html.
# Run in the project's virtual environment; the README's test line and .ci/run call it. Each step is skipped when
# its tool is already there, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_llamacpp.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "install_test_tools: installing chromium and chromium-driver (apt)" >&2
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver; } >/tmp/sentinel-apt.log 2>&1; then
        echo "install_test_tools: apt could not install chromium and chromium-driver; see /tmp/sentinel-apt.log" >&2
        exit 1
    fi
fi
