#!/usr/bin/env bash
# The container's command: `trilate serve` exactly as on a laptop, with the container's settings.  Arguments
# are models and `trilate serve` options (later options win), e.g.
#   docker run ... trilate answerdotai/answerai-colbert-small-v1 --max-model-len 512
#   docker run ... trilate --no-frontend                      # tritonserver only (compose, Kubernetes)
# It binds every interface *inside* the container, Triton's ports too (TRILATE_TRITON_HOST): the compose front end
# and Kubernetes' Services reach tritonserver across containers. Publish only what clients need, on the host's
# loopback (-p 127.0.0.1:8000:8000), unless a load balancer or an orchestrator's network sits in front; Triton's
# ports have none of the REST front end's limits.
# tritonserver: the container's (first on PATH); see `trilate serve --help` for --tritonserver.
set -euo pipefail
exec trilate serve \
    --host "${TRILATE_HOST:-0.0.0.0}" \
    --triton-host "${TRILATE_TRITON_HOST:-0.0.0.0}" \
    --device "${TRILATE_DEVICE:-gpu}" \
    --model-repository "${TRILATE_MODEL_REPOSITORY:-/cache/model_repository}" \
    --port 8000 --http-port 8010 --grpc-port 8011 --metrics-port 8012 \
    "$@"
