"""The service's main process: spawns the gateway and one worker per model, and keeps them alive."""
