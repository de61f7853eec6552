#!/usr/bin/env bash
# Run the Flex Template built by build.sh.
#   PROJECT=... REGION=... BUCKET=... SNAPSHOT=CC-MAIN-2024-10 VERSION=0.1.0 deploy/dataflow/flex-template/run.sh
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${BUCKET:?}" "${SNAPSHOT:?}"
VERSION="${VERSION:-0.1.0}"
REPO="${REGION}-docker.pkg.dev/${PROJECT}/kosmos"
gcloud dataflow flex-template run "kosmos-curate-$(echo "${SNAPSHOT}" | tr '[:upper:]' '[:lower:]')" \
  --project "${PROJECT}" --region "${REGION}" \
  --template-file-gcs-location "gs://${BUCKET}/kosmos/templates/curate-${VERSION}.json" \
  --parameters input="${LISTING:-https://data.commoncrawl.org/crawl-data/${SNAPSHOT}/warc.paths.gz}" \
  --parameters output="gs://${BUCKET}/kosmos/$(echo "${SNAPSHOT}" | tr '[:upper:]' '[:lower:]')" \
  --parameters config="gs://${BUCKET}/kosmos/configs/curate-commoncrawl.json" \
  --parameters num_shards="${NUM_SHARDS:-4096}" \
  --parameters sdk_container_image="${REPO}/curate:${VERSION}" \
  --parameters experiments=use_runner_v2 \
  --temp-location "gs://${BUCKET}/kosmos/tmp" \
  --staging-location "gs://${BUCKET}/kosmos/staging" \
  --worker-machine-type "${MACHINE_TYPE:-n2-standard-8}" \
  --max-workers "${MAX_WORKERS:-500}" \
  --additional-experiments no_use_multiple_sdk_containers
