"""How a request reaches its engine replica: the direct ingress (an engine replica that is also the
HTTP server), the routed ingress (a router replica in front of the engines) and the replica picker
HAProxy asks which replica takes a request."""
