"""How a request reaches its engine replica: the direct ingress (an engine replica that is also the
HTTP server), the platform's ingress (PlatformIngress: what HAProxy cannot place, and every request
in routed mode) and the replica picker HAProxy asks which replica takes a request."""
