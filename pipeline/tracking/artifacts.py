"""Artifact locations that move with the project. MLflow writes a ``file:`` artifact location into the store as an
absolute path when it creates an experiment, so a project moved or copied with its ``mlflow.db`` would go on
writing under the old folder. A sqlite store's experiments get the location ``facevae-artifacts:/`` instead: a
run's ``facevae-artifacts:/<run id>/artifacts`` is that path under the ``mlartifacts`` folder beside the store
that holds it. :class:`StoreArtifactRepository` is registered with MLflow as an artifact-repository plugin (the
``mlflow.artifact_repository`` entry point in pyproject.toml), so MLflow's client, ``mlflow ui`` and
``mlflow.pytorch.load_model`` read and write such locations alike."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from ..errors import UserError
from .store import ARTIFACT_LOCATION, ARTIFACT_SCHEME, artifact_root


def store_folder(tracking_uri: str | None) -> Path:
    """The ``mlartifacts`` folder beside the sqlite store ``tracking_uri`` (else $MLFLOW_TRACKING_URI's, else the
    ``mlflow.db`` of the working directory, where ``mlflow ui`` runs). A tracking server's runs never resolve to
    a folder on this machine."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip() or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if not uri.startswith("sqlite:///"):
        raise UserError(f"the tracking store {uri} gave the artifact location {ARTIFACT_LOCATION}..., which only a "
                        f"local sqlite store can hold: nothing is written; point MLFLOW_TRACKING_URI at a real MLflow "
                        f"server")
    return artifact_root(uri)


def local_path(artifact_uri: str, tracking_uri: str | None) -> Path:
    """Where ``facevae-artifacts:/<path>`` lies: ``<path>`` under :func:`store_folder`, never outside it."""
    parts = urlsplit(artifact_uri)
    rel = PurePosixPath(unquote(parts.path).lstrip("/"))
    if parts.scheme != ARTIFACT_SCHEME or parts.netloc or ".." in rel.parts:
        raise UserError(f"{artifact_uri[:200]!r} is not an artifact location of this project's store "
                        f"({ARTIFACT_LOCATION}<run id>/artifacts): nothing is read or written there")
    return store_folder(tracking_uri).joinpath(*rel.parts)


class StoreArtifactRepository(LocalArtifactRepository):
    """MLflow's local artifact repository, rooted at the path :func:`local_path` gives."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        super().__init__(local_path(artifact_uri, tracking_uri).as_uri(), tracking_uri, registry_uri)
