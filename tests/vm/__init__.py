"""The cgroup v2 test VM: a small QEMU guest with a pure cgroup v2 hierarchy.

Production hosts run cgroup v2; the development host's controllers are on v1. The tests marked
`requires("cgroup2")` therefore run, on such a host, inside one VM per pytest session:

- image.py    Debian's kernel package and a busybox initramfs, built once into a cache
- init.sh     the guest's /init: host / read-only with a tmpfs overlay, the checkout
              read-write at the same path, cgroup2 with every controller, then the command
- machine.py  the QEMU command line (KVM where it boots, TCG otherwise) and one run of it
- plugin.py   the pytest side: items moved to the end, run in the guest, reports replayed
- run.py      any command in the VM, for debugging: `tests/vm/run.py -- cat /proc/self/cgroup`
"""
