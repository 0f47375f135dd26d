"""Find and load the models to serve: one MODEL.onnx, or a repository NAME/VERSION/model.onnx."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgecnn.serve.errors import ModelNotFound, shown
from edgecnn.serve.model import Model, load_model
from edgecnn.serve.settings import ServeSettings

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelSource:
    path: Path
    name: str | None = None  # None: the name recorded in the file
    version: str | None = None


def find_models(path: Path) -> list[ModelSource]:
    """The model files under ``path``: the file itself, or every NAME/VERSION/model.onnx of a repository."""
    path = Path(path)
    if path.is_file():
        return [ModelSource(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"no model file or repository at {path}")
    sources = [
        ModelSource(file, name=file.parent.parent.name, version=file.parent.name)
        for file in sorted(path.glob(f"*/*/{MODEL_FILE}"))
    ]
    if not sources:
        raise FileNotFoundError(f"{path} is a directory but holds no NAME/VERSION/{MODEL_FILE}")
    return sources


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions order as numbers (2 < 10) and above any non-numeric one."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


class Repository:
    """Loaded models by name and version; an empty version means the highest one."""

    def __init__(self, models: list[Model]) -> None:
        self._models: dict[str, dict[str, Model]] = {}
        for model in models:
            versions = self._models.setdefault(model.name, {})
            if model.version in versions:
                raise ValueError(f"model {model.name} version {model.version} is loaded twice ({model.path})")
            versions[model.version] = model

    @classmethod
    def load(cls, settings: ServeSettings) -> "Repository":
        models = []
        for source in find_models(settings.model):
            model = load_model(source.path, settings, name=source.name, version=source.version)
            recorded = (model.metadata.name, model.metadata.version)
            if source.name is not None and recorded != (model.name, model.version):
                log.warning(
                    "repository folders name this model differently from its metadata; serving it by its folders",
                    extra={"model": model.name, "version": model.version, "recorded": list(recorded)},
                )
            models.append(model)
        return cls(models)

    def __iter__(self):
        for versions in self._models.values():
            yield from versions.values()

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        return sorted(self._versions_of(name), key=version_key)

    def get(self, name: str, version: str = "") -> Model:
        """The model ``name`` at ``version``; an empty name selects the only model served."""
        versions = self._versions_of(name)
        if not version:
            return versions[max(versions, key=version_key)]
        if version not in versions:
            raise ModelNotFound(
                f"model {shown(name)} has no version {shown(version)}; versions: {', '.join(self.versions(name))}"
            )
        return versions[version]

    def _versions_of(self, name: str) -> dict[str, Model]:
        if not name and len(self._models) == 1:
            return next(iter(self._models.values()))
        if name not in self._models:
            wanted = f"model {shown(name)} is not served" if name else "a model name is required"
            raise ModelNotFound(f"{wanted}; models: {', '.join(self.names())}")
        return self._models[name]
