"""Model families (families.py), what each task trains on (tasks.py), and building a model (build.py)."""
