"""MLflow tracking, by concern:

* :mod:`.store`: where the store is (``MLFLOW_TRACKING_URI``, else the project's ``mlflow.db``), a server
  checked before any work, opening the store, the experiment by name;
* :mod:`.artifacts`: the MLflow plugin of a sqlite store's artifact location ``facevae-artifacts:/``, the
  ``mlartifacts`` folder beside the store wherever it is moved;
* :mod:`.provenance`: where a model came from (git commit, file hashes, source tags, dataset inputs);
* :mod:`.runs`: the model's run (:class:`~.runs.TrainingRun`), its logged and registered model;
* :mod:`.stage_runs`: a child run per downstream stage (:func:`~.stage_runs.log_stage`);
* :mod:`.outbox`: what a training could not send while the server was away, sent later;
* :mod:`.view`: the experiment's view in the MLflow UI (``make ui``).

Importing this package imports no MLflow and sets no environment variable: :func:`.store.mlflow_settings` does,
when a store is opened or a command starts.
"""
