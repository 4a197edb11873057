"""MLflow: the run the driver opens and closes (run.py), rank 0's buffered metrics (metrics.py), plots (plots.py)."""
