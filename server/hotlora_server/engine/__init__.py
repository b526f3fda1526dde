"""The engine: owns the model (torch lives here and nowhere above it)."""
