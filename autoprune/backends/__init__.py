"""Training backends that turn a dense model into one matching an allocation exactly."""
