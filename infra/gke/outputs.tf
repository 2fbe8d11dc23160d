output "bucket" {
  value = "gs://${google_storage_bucket.radflow.name}"
}

output "get_credentials" {
  description = "point kubectl at the cluster"
  value       = "gcloud container clusters get-credentials ${google_container_cluster.radflow.name} --region ${var.region} --project ${var.project}"
}

output "annotate_pipeline_runner" {
  description = "run once KFP is installed: the steps then act as the pipeline service account"
  value       = "kubectl -n ${var.kfp_namespace} annotate serviceaccount pipeline-runner --overwrite iam.gke.io/gcp-service-account=${google_service_account.pipeline.email}"
}

output "serving_service_account" {
  description = "the GSA that infra/serving/overlays/gcs binds the tf-serving KSA to"
  value       = google_service_account.serving.email
}
