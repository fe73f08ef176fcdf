"""Ripcord: progressive delivery for a gRPC payment router."""
