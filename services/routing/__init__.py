"""Which replica of a model takes a request: the affinity policy (a Ray Serve request router) and
the record of its decisions."""
