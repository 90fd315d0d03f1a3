"""The server: a router process and worker processes over ZeroMQ (see docs/architecture.md)."""
