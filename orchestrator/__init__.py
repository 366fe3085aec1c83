"""skiff.orchestrator: a thin Kubernetes-style layer on the CRI service (issue 7). So far: the
API objects read from Kubernetes YAML and checked (api/), label selectors (labels.py) and the
state store (store/)."""
