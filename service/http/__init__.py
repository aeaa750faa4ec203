"""The HTTP port: what speaks HTTP rather than gRPC (gateway webhooks; metrics, health and the
dashboard join it as more routes)."""
