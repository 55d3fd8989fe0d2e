"""The first load of a GGUF model says once what it converts and where it is cached (a silent minute looks like a
hang); a cached load says nothing. The conversion itself is replaced by the tiny model here (it takes ~80 s)."""

from fst_env import models


def test_first_load_prints_one_notice_and_a_cached_load_none(tmp_path, monkeypatch, capsys):
    gguf = tmp_path / "Fake-Model.Q4.gguf"
    gguf.write_bytes(b"not really a gguf")
    policy = models.tiny_policy(0)
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: policy.model)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", lambda *a, **k: policy.tokenizer)
    monkeypatch.setattr(models, "unpack_model", lambda model: model)
    entry = models._cached_gguf(gguf, tmp_path / "cache")
    err = capsys.readouterr().err
    assert f"first load of {gguf.name}" in err and str(entry) in err and "FST_ENV_CACHE" in err
    assert "cached in" in err and models.is_cache_entry(entry)
    assert models._cached_gguf(gguf, tmp_path / "cache") == entry
    assert capsys.readouterr().err == ""
