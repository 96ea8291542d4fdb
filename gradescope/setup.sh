#!/usr/bin/env bash
# Gradescope autograder image setup (Ubuntu 22.04 base): Python 3.11, the CPU build of torch, the course.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends software-properties-common
add-apt-repository -y ppa:deadsnakes/ppa        # Ubuntu 22.04 ships Python 3.10; the course needs 3.11
apt-get update
apt-get install -y --no-install-recommends python3.11 python3.11-venv util-linux
python3.11 -m venv /opt/aigc
/opt/aigc/bin/pip install --upgrade pip
/opt/aigc/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu   # no CUDA download
cd /autograder/source
/opt/aigc/bin/pip install -r requirements.txt
# learner code runs as an unprivileged uid there (no namespaces): it must not read these
chmod -R go-rwx aigc_lib solutions
