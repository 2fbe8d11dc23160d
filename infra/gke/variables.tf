variable "project" {
  description = "GCP project id"
  type        = string
}

variable "region" {
  description = "region of the bucket and the (regional) cluster"
  type        = string
  default     = "europe-west4"
}

variable "zones" {
  description = "zones of the node pools; pick ones that offer gpu_type"
  type        = list(string)
  default     = ["europe-west4-a"]
}

variable "cluster_name" {
  description = "GKE cluster name"
  type        = string
  default     = "radflow"
}

variable "bucket" {
  description = "GCS bucket for data, pipeline artifacts (pipeline root) and pushed models"
  type        = string
}

variable "cpu_machine_type" {
  description = "machine type of the CPU pool (KFP itself, ingest, validate, evaluate, push, TF Serving)"
  type        = string
  default     = "e2-standard-8"
}

variable "cpu_max_nodes" {
  description = "autoscaling ceiling of the CPU pool, per zone"
  type        = number
  default     = 4
}

variable "gpu_type" {
  description = "accelerator of the GPU pool; must match cluster.gpu_node_selector in the radflow config"
  type        = string
  default     = "nvidia-tesla-t4"
}

variable "gpus_per_node" {
  description = "GPUs per GPU node; cluster.gpus (per train pod) must not exceed it"
  type        = number
  default     = 1
}

variable "gpu_machine_type" {
  description = "machine type of the GPU pool (n1 for T4/V100/P100, g2 for L4, a2 for A100)"
  type        = string
  default     = "n1-standard-8"
}

variable "gpu_max_nodes" {
  description = "autoscaling ceiling of the GPU pool, per zone (it scales to zero between trainings); room for GPU serving (2), a run's fold tasks (3) or a Katib search (3 trials): cluster.gpu_pool_nodes, `radflow capacity`; the project needs that much GPU quota"
  type        = number
  default     = 6
}

variable "gpu_spot" {
  description = "Spot GPU nodes: much cheaper, can be preempted (train retries, cluster.retries)"
  type        = bool
  default     = true
}

variable "kfp_namespace" {
  description = "namespace of Kubeflow Pipelines; its pipeline-runner service account runs the steps"
  type        = string
  default     = "kubeflow"
}

variable "serving_namespace" {
  description = "namespace of TF Serving (infra/serving); its tf-serving service account reads the models"
  type        = string
  default     = "radflow"
}
