# GKE for radflow: a CPU pool, an autoscaling (to zero) GPU pool that only GPU steps can use, a
# GCS bucket, and Workload Identity, so no step or server ever holds a service-account key.
#   terraform init && terraform apply -var project=MY_PROJECT -var bucket=MY_BUCKET

resource "google_container_cluster" "radflow" {
  name           = var.cluster_name
  location       = var.region
  node_locations = var.zones

  # The default pool cannot be configured like ours; start with one node and remove it.
  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = false

  release_channel {
    channel = "REGULAR"
  }

  workload_identity_config {
    workload_pool = "${var.project}.svc.id.goog"
  }
}

resource "google_container_node_pool" "cpu" {
  name     = "cpu"
  cluster  = google_container_cluster.radflow.id
  location = var.region

  autoscaling {
    min_node_count = 1
    max_node_count = var.cpu_max_nodes
  }

  node_config {
    machine_type = var.cpu_machine_type
    disk_size_gb = 100
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    labels = {
      "radflow/pool" = "cpu"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "gpu" {
  name     = "gpu"
  cluster  = google_container_cluster.radflow.id
  location = var.region

  autoscaling {
    min_node_count = 0
    max_node_count = var.gpu_max_nodes
  }

  node_config {
    machine_type = var.gpu_machine_type
    spot         = var.gpu_spot
    disk_size_gb = 200
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]

    guest_accelerator {
      type  = var.gpu_type
      count = var.gpus_per_node
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    # GKE also labels these nodes cloud.google.com/gke-accelerator=<gpu_type>, which the train
    # step selects (cluster.gpu_node_selector); the taint keeps every other pod off them
    # (cluster.gpu_tolerations).
    labels = {
      "radflow/pool" = "gpu"
    }
    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_storage_bucket" "radflow" {
  name                        = var.bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # Pushed versions and source images are records: keep overwritten or deleted objects for a while.
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 90
    }
    action {
      type = "Delete"
    }
  }
}

# Identities: the pipeline steps read data and write artifacts and models; serving only reads.
resource "google_service_account" "pipeline" {
  account_id   = "radflow-pipeline"
  display_name = "radflow pipeline steps (KFP pipeline-runner)"
}

resource "google_service_account" "serving" {
  account_id   = "radflow-serving"
  display_name = "radflow TF Serving"
}

resource "google_storage_bucket_iam_member" "pipeline" {
  bucket = google_storage_bucket.radflow.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_storage_bucket_iam_member" "serving" {
  bucket = google_storage_bucket.radflow.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.serving.email}"
}

# Workload Identity: the Kubernetes service accounts act as the Google ones (annotate them; see outputs).
resource "google_service_account_iam_member" "pipeline_workload_identity" {
  service_account_id = google_service_account.pipeline.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project}.svc.id.goog[${var.kfp_namespace}/pipeline-runner]"
}

resource "google_service_account_iam_member" "serving_workload_identity" {
  service_account_id = google_service_account.serving.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project}.svc.id.goog[${var.serving_namespace}/tf-serving]"
}
