"""Finding a model on disk: a local folder, or a Hugging Face id through huggingface_hub
(its cache and HF_HUB_OFFLINE honoured). When nothing works, one error says what was tried."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sglang_diffusion.errors import ModelLoadError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelIndex:
    """model_index.json: the pipeline class, its components and any extra keys (boundary_ratio, ...)."""

    path: Path
    class_name: str
    components: dict[str, tuple[str | None, str | None]]  # name -> (library, class); (None, None) if absent
    extras: dict = field(default_factory=dict)

    @property
    def text_encoders(self) -> list[str]:
        """Text-encoder component names in model_index order: text_encoder, text_encoder_2, ..."""
        return [n for n in self.components if n.startswith("text_encoder") and self.components[n][1]]


def read_model_index(folder: Path) -> ModelIndex:
    index_file = folder / "model_index.json"
    try:
        data = json.loads(index_file.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{folder} is not a diffusers model folder: model_index.json is missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {index_file}: {e}") from None
    if not isinstance(data, dict) or "_class_name" not in data:
        raise ModelLoadError(f"{index_file} has no _class_name: not a diffusers model_index.json")
    class_name = data["_class_name"]
    if isinstance(class_name, list):  # [module, class] of a custom (remote-code) pipeline
        class_name = class_name[-1]
    components, extras = {}, {}
    for key, value in data.items():
        if key.startswith("_"):
            continue
        if isinstance(value, list) and len(value) == 2 and all(v is None or isinstance(v, str) for v in value):
            components[key] = (value[0], value[1])
        else:
            extras[key] = value
    return ModelIndex(folder, class_name, components, extras)


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not name.startswith((".", "~"))


def resolve_model_path(model_path: str, revision: str | None = None) -> Path:
    """A local diffusers folder for `model_path`, downloading (or reading the HF cache) if it is an id."""
    local = Path(model_path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(f"model path {model_path!r} is a file, not a diffusers model folder")
        read_model_index(local)  # fails clearly if it is not a diffusers folder
        return local
    tried = [f"a local folder ({local} does not exist)"]
    if not is_repo_id(model_path):
        tried.append("not a Hugging Face id either")
        raise ModelLoadError(f"cannot find model {model_path!r}: tried " + "; ".join(tried))
    import diffusers
    from diffusers import DiffusionPipeline

    verbosity = diffusers.logging.get_verbosity()
    diffusers.logging.set_verbosity_error()  # its "Couldn't connect to the Hub" warning: our error says it all
    try:
        folder = Path(DiffusionPipeline.download(model_path, revision=revision))
    except Exception as e:  # hub errors come in many classes (offline, 404, auth, network)
        raise ModelLoadError(hub_failure(f"model {model_path!r}", model_path, e, tried)) from None
    finally:
        diffusers.logging.set_verbosity(verbosity)
    read_model_index(folder)
    return folder


def hub_failure(what: str, repo_id: str, error: BaseException, tried: list[str]) -> str:
    """Why `repo_id` could not be had from the Hugging Face Hub or its cache: what was tried (the
    cache's folder, the Hub's address) and how to fix it. diffusers wraps the Hub's error (the
    real cause) in an OSError that points to a stack trace the user never sees: the cause is
    looked up in the chain."""
    from huggingface_hub import constants, errors

    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    names = {base.__name__ for e in chain for base in type(e).__mro__}  # the error classes, bases included
    cache = f"the Hugging Face cache ({constants.HF_HUB_CACHE}: {repo_id} is not there, or not complete)"
    download = f"hf download {repo_id}"
    if constants.HF_HUB_OFFLINE or "OfflineModeIsEnabled" in names:
        hub = "the Hub: not asked, HF_HUB_OFFLINE=1 forbids downloads"
        fix = (f"unset HF_HUB_OFFLINE to download it, or download it where the Hub is reachable "
               f"(`{download}`, then copy the cache) or pass a local diffusers folder")
    elif "GatedRepoError" in names:
        hub = f"{constants.ENDPOINT}/{repo_id}: a gated repository"
        fix = f"accept its terms on {constants.ENDPOINT}/{repo_id} and log in (`hf auth login` or HF_TOKEN)"
    elif "RepositoryNotFoundError" in names:
        hub = f"{constants.ENDPOINT}: no repository {repo_id!r} (or a private one, without a login)"
        fix = "check the id's spelling; for a private model log in (`hf auth login` or HF_TOKEN)"
    elif "RevisionNotFoundError" in names:
        hub = f"{constants.ENDPOINT}/{repo_id}: no such revision"
        fix = "check --revision"
    elif names & {"ConnectionError", "ConnectError", "Timeout", "TimeoutException", "ConnectTimeout",
                  "ReadTimeout", "NetworkError"} or "LocalEntryNotFoundError" in names:
        cause = next((e for e in reversed(chain) if not isinstance(e, errors.LocalEntryNotFoundError)), chain[-1])
        hub = f"{constants.ENDPOINT}: unreachable ({_first_line(cause)})"
        fix = (f"check the network (or HF_ENDPOINT / the proxy settings), or download it where the Hub is "
               f"reachable (`{download}`, then copy the cache) or pass a local diffusers folder")
    else:
        cause = chain[-1]
        hub = f"{constants.ENDPOINT}: {type(cause).__name__}: {_first_line(cause)}"
        fix = f"pass a local diffusers folder, or see whether `{download}` works"
    return f"cannot find {what}: tried {'; '.join([*tried, cache, hub])}. To fix: {fix}"


def resolve_component_path(component: str, path: str) -> Path:
    """A complete component folder (config.json + weights) or a Hugging Face id for `--<component>-path`."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(f"--{component.replace('_', '-')}-path {path!r} is a file; "
                                 "give a complete component folder (config.json + safetensors)")
        return local
    tried = [f"a local folder ({local} does not exist)"]
    if not is_repo_id(path):
        tried.append("not a Hugging Face id either")
        raise ModelLoadError(f"cannot find component {component!r} at {path!r}: tried " + "; ".join(tried))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path))
    except Exception as e:  # as above: many hub error classes
        raise ModelLoadError(hub_failure(f"component {component!r} at {path!r}", path, e, tried)) from None


def component_folder(name: str, args, index: ModelIndex) -> Path:
    """Component `name`'s folder: its --<name>-path override (`args.component_paths`) resolved,
    else the model's own subfolder."""
    override = args.component_paths.get(name)
    return resolve_component_path(name, override) if override else index.path / name


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"
