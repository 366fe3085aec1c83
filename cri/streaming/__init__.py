"""The CRI streaming server (kubelet `pkg/kubelet/cri/streaming/`): Exec answers with a URL of
this server holding a one-time token; the client (kubelet, crictl, `skiff exec -i`) connects
there and the command's stdin, stdout, stderr and exit status travel over that connection.

    tokens.py    one-time tokens that expire, each holding what its session will run
    channels.py  the remotecommand channel protocol: channel numbers and the exit Status
    server.py    the TCP server: WebSocket upgrade (wsproto), then the session
    websocket.py an accepted WebSocket: channel frames out, the client's messages in
    exec.py      an exec session: the process through the fork server, its pipes pumped
    portforward.py  a port-forward session: connections to ports in the pod's network namespace
    client.py    the client side, for `skiff exec -it`, `skiff port-forward`, `skiff cri exec -it`

Served over WebSocket: exec with the v5.channel.k8s.io and v4.channel.k8s.io subprotocols
(without a TTY), and port-forward with v4.channel.k8s.io. Not yet: SPDY/3.1, a TTY and
resize, attach.
"""
