"""DVC stage train: data/processed/dataset/ -> models/ (the model, its configs, checkpoint.pt, mlflow_run.json),
metrics/train.json and metrics/train_history.csv, with the model's MLflow run (pipeline/train_stage.py).

models/ is a persistent DVC output, so the checkpoint survives for resuming: after a crash or a stop the next
run continues from it; with train.resume a finished run is extended when train.epochs is raised."""

from pipeline.cli import stage_main
from pipeline.train_stage import train_stage

if __name__ == "__main__":
    stage_main(train_stage)
