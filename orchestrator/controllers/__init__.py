"""Controllers: level-triggered reconcile loops (kubernetes `pkg/controller/`, sample-controller).
Informer handlers only enqueue keys; a worker reads the cached desired and actual state, acts
through the API, and writes status only when it changed. Success forgets the key, an error
requeues it with back-off, a vanished object ends its work."""
