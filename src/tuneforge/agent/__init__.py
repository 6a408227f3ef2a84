"""Multi-LLM tool agents: trajectories, role examples, the offline tool world, the runtime."""
