"""``pochi optimize``: hyperparameter search with Optuna over real training runs.

Modules:
  space    the config's search_space -> trial suggestions -> config overrides (checked first)
  study    sampler / pruner (with arguments), storage URL, direction from the metric
  seeding  a seeded sampler whose seed moves with the trial number (workers sharing a study)
  run      the study loop (``optimize``, Ctrl+C) and the objective (``training.run`` +
           pruning)
  outputs  best_params.json, trials_history.json, study_statistics.json, optimized_config.py
  charts   history / importance / contour charts as Plotly HTML and matplotlib PNG
"""
