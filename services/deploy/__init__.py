"""Cluster-side tooling: read a RayService's state through the Kubernetes API."""
