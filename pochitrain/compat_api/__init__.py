"""The original pochitrain's Python API (``PochiTrainer``, ``create_data_loaders``,
``PochiPredictor``) as thin layers over this package: ``data`` (loaders), ``trainer`` (the
epoch loop of ``pochi train``), ``predictor`` (checkpoints through the model facade).
``from pochitrain import PochiTrainer`` imports them on first use."""
