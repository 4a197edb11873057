"""Training: the driver side (launch.py) and what runs on each Ray Train worker (loop.py and its parts)."""
