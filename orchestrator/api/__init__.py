"""The API objects: which kinds there are (kinds.py), their metadata (meta.py), what a valid
spec is (validation.py), and reading them from Kubernetes YAML or JSON (manifests.py).

Objects stay JSON-shaped dicts, as Kubernetes serializes them: the store keeps them as written,
`get -o yaml` prints them back, and an unknown field a newer kubectl wrote survives. What a
controller acts on is checked here first, with the path of the field that is wrong.
"""
