"""The scheduler: which node a pod runs on (kube-scheduler's framework, reduced to what skiff's
objects carry). `nodes.py` keeps what each node has and holds, `filters.py` says which nodes
can take a pod and why the others cannot, `scores.py` ranks the ones that can, and
`decide.py` puts them together into a binding or the reason there is none."""
