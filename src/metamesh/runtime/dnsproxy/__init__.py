"""The sidecar's DNS responder: mesh host names answered with their VIPs, like Istio's DNS proxy.

- :mod:`.table`: the names (from the proxy's config snapshot) and the answer to one query,
  without I/O: the wire format is dnspython's, parsing and encoding included.
- :mod:`.responder`: the UDP and TCP servers on ``127.0.0.1:15053`` and the forwarding of
  other names to the workload's own nameservers.
"""
