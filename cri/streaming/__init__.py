"""The CRI streaming server (kubelet `pkg/kubelet/cri/streaming/`): Exec answers with a URL of
this server holding a one-time token; the client (kubelet, crictl, `skiff exec -i`) connects
there and the command's stdin, stdout, stderr and exit status travel over that connection.

    tokens.py    one-time tokens that expire, each holding what its session will run
    channels.py  the remotecommand channel protocol: channel numbers and the exit Status
    server.py    the TCP server: WebSocket upgrade (wsproto), then the session
    websocket.py an accepted WebSocket: channel frames out, the client's messages in
    spdy.py      SPDY/3.1 framing (no maintained library has it)
    spdy_peer.py an exec's SPDY streams, as the channels a WebSocket session has
    exec.py      an exec session: the process through the fork server, its pipes pumped
    portforward.py  a port-forward session over WebSocket: connections to ports in the pod
    spdy_portforward.py  the same over SPDY: a pair of streams per connection
    attach.py    an attach session: the container's stdin through its monitor, its log followed
    client.py    the client side, for `skiff exec -it`, `skiff port-forward`, `skiff cri exec -it`

Served: exec (stdin and its end, a terminal and its size, the exit Status) over WebSocket
with the v5.channel.k8s.io and v4.channel.k8s.io subprotocols and over SPDY/3.1 with
v4.channel.k8s.io; port-forward over WebSocket (v4.channel.k8s.io) and SPDY/3.1
(portforward.k8s.io); attach over WebSocket, without a TTY (attach.py).
"""
