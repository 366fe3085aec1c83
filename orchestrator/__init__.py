"""skiff.orchestrator: a thin Kubernetes-style layer on the CRI service (issue 7): label
selectors (labels.py) and the state store (store/) so far."""
