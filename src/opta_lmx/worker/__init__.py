"""One OS process per loaded model: owns the engine, serves generate/cancel over ZeroMQ."""
