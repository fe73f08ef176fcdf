"""The daemon's network faces: gRPC evaluation (8013), gRPC sync (8015), HTTP management (8014)."""
