#!/usr/bin/env bash
# Launch the curation job on Dataflow from a machine with this repository and gcloud
# credentials (`gcloud auth application-default login`), with the custom worker image.
#
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket IMAGE=us-central1-docker.pkg.dev/my-project/kosmos/curate:0.1.0 \
#   SNAPSHOT=CC-MAIN-2024-10 deploy/dataflow/launch.sh
#
# Input: the snapshot's warc.paths.gz listing; its relative entries are read from Common
# Crawl's public HTTPS access (https://data.commoncrawl.org/), streamed with resume. With
# PATHS_PREFIX=s3://commoncrawl/ they go through Beam's S3 file system instead (the bucket
# needs AWS credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are passed as Beam S3
# options). A copy of the listing and files elsewhere works too: set LISTING and PATHS_PREFIX.
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${BUCKET:?}" "${IMAGE:?}" "${SNAPSHOT:?}"
MAX_WORKERS="${MAX_WORKERS:-500}"
MACHINE_TYPE="${MACHINE_TYPE:-n2-standard-8}"
DISK_GB="${DISK_GB:-100}"
PATHS_PREFIX="${PATHS_PREFIX:-https://data.commoncrawl.org/}"
LISTING="${LISTING:-${PATHS_PREFIX}crawl-data/${SNAPSHOT}/warc.paths.gz}"
OUT="gs://${BUCKET}/kosmos/${SNAPSHOT,,}"
cd "$(dirname "$0")/../.."

# Common Crawl WARCs hold pages, not images: download them (fetch.source http), and skip the
# revisit join (Common Crawl has no revisit records).
bin/kosmos curate \
  --input "${LISTING}" \
  --paths_prefix "${PATHS_PREFIX}" \
  --output "${OUT}" \
  --config "${CONFIG:-deploy/dataflow/curate-commoncrawl.json}" \
  --no_resolve_revisits \
  --num_shards "${NUM_SHARDS:-4096}" \
  --no_wait \
  --runner DataflowRunner \
  --project "${PROJECT}" \
  --region "${REGION}" \
  --job_name "kosmos-curate-${SNAPSHOT,,}" \
  --temp_location "gs://${BUCKET}/kosmos/tmp" \
  --staging_location "gs://${BUCKET}/kosmos/staging" \
  --sdk_container_image "${IMAGE}" \
  --sdk_location container \
  --machine_type "${MACHINE_TYPE}" \
  --max_num_workers "${MAX_WORKERS}" \
  --disk_size_gb "${DISK_GB}" \
  --experiments use_runner_v2 \
  --experiments no_use_multiple_sdk_containers \
  --number_of_worker_harness_threads 16 \
  --s3_region_name us-east-1 \
  ${AWS_ACCESS_KEY_ID:+--s3_access_key_id "${AWS_ACCESS_KEY_ID}" --s3_secret_access_key "${AWS_SECRET_ACCESS_KEY}"} \
  ${SERVICE_ACCOUNT:+--service_account_email "${SERVICE_ACCOUNT}"} \
  ${SUBNETWORK:+--subnetwork "${SUBNETWORK}" --no_use_public_ips}
