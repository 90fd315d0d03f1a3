"""Agent workload traces: formats, importers and (later) a replayer that drives a server."""
