"""Where the pods' /etc files live: <state_root>/pod-files/<sandbox id>/{hostname,hosts,resolv.conf},
a directory the service binds onto itself while it runs (runtime/own_mount.py).

Each container binds these files in. The state root's mount holds every pod's /dev/shm tmpfs
and pinned namespaces, four mounts a pod: with 500 pods, a bind of a file there took 0.1 to
0.35 ms. A service that was killed finds the bind there, and keeps it.
"""

DIRECTORY = "pod-files"
