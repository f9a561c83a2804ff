"""Kubernetes manifests rendered from the config (`llmctl k8s render`)."""
