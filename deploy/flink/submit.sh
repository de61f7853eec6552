#!/usr/bin/env bash
# Submit `kosmos curate` to a Flink cluster through the Beam Flink job server.
#   JOB_ENDPOINT=localhost:8099 WORKER_POOL=localhost:50000 deploy/flink/submit.sh --input ... --output ...
# Inputs and outputs must be paths every task manager can read and write (a shared volume,
# gs://, s3://). Any other option of `kosmos curate` or of Beam may be added.
set -euo pipefail
JOB_ENDPOINT="${JOB_ENDPOINT:-localhost:8099}"
WORKER_POOL="${WORKER_POOL:-localhost:50000}"
cd "$(dirname "$0")/../.."
exec bin/kosmos curate "$@" \
  --runner PortableRunner \
  --job_endpoint "${JOB_ENDPOINT}" \
  --environment_type EXTERNAL \
  --environment_config "${WORKER_POOL}" \
  --parallelism "${PARALLELISM:-16}"
