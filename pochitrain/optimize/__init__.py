"""``pochi optimize``: hyperparameter search with Optuna over real training runs."""
