#!/usr/bin/env bash
# Build the repository for the models given as arguments (default: all-MiniLM-L6-v2), then run the
# container's own tritonserver on all interfaces of the container (publish ports to loopback on the host).
set -euo pipefail
trilate build-repo "$@" --device gpu --output /opt/trilate/model_repository
exec tritonserver --model-repository=/opt/trilate/model_repository \
    --http-port=8010 --grpc-port=8011 --metrics-port=8012
