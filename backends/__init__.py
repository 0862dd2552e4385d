"""Engine adapters and the simulated SGLang engine."""
