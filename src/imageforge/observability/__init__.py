"""What operators see of a running process: request lines, metrics, health, traces."""
