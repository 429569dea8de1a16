"""Training and validation data: image sources, batch policies, deterministic crops."""
