"""Experiment trackers (L2): a txsuite run exported to MLflow or TensorBoard, read through
txsuite.results like the report. The tracker packages are optional extras, imported only when an
export runs (`pip install 'txsuite[mlflow]'`, `'txsuite[tensorboard]'`); a missing one raises
TrackerUnavailable naming the extra.

    export_mlflow("results/smoke/<run id>", tracking_uri="sqlite:///mlflow.db")
    export_tensorboard("results/smoke/<run id>", "tb/")
"""
from txsuite.trackers.mapping import TrackerUnavailable
from txsuite.trackers.mlflow_export import DEFAULT_TRACKING_URI, MlflowSummary, default_tracking_uri, export_mlflow
from txsuite.trackers.tensorboard_export import TensorBoardSummary, export_tensorboard

__all__ = ["DEFAULT_TRACKING_URI", "MlflowSummary", "TensorBoardSummary", "TrackerUnavailable", "default_tracking_uri",
           "export_mlflow", "export_tensorboard"]
