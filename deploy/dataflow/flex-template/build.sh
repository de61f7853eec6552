#!/usr/bin/env bash
# Build both images with Cloud Build and write the Flex Template spec to GCS.
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket VERSION=0.1.0 deploy/dataflow/flex-template/build.sh
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${BUCKET:?}"
VERSION="${VERSION:-0.1.0}"
REPO="${REGION}-docker.pkg.dev/${PROJECT}/kosmos"
cd "$(dirname "$0")/../../.."
gcloud builds submit --project "${PROJECT}" --region "${REGION}" \
  --config deploy/dataflow/flex-template/cloudbuild.yaml \
  --substitutions "_REPO=${REPO},_VERSION=${VERSION}" .
gcloud dataflow flex-template build "gs://${BUCKET}/kosmos/templates/curate-${VERSION}.json" \
  --project "${PROJECT}" \
  --image "${REPO}/curate-launcher:${VERSION}" \
  --sdk-language PYTHON \
  --metadata-file deploy/dataflow/flex-template/metadata.json
