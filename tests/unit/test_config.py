from pathlib import Path

import pytest

from sdlab.config import load_config, parse_config
from sdlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_config_default_file_is_valid_with_two_models():
    settings = load_config(ROOT / "sdlab.yaml")
    assert len(settings.runtimes) >= 2
    assert len({rt.model.name for rt in settings.runtimes}) >= 2, "routing must be visible: different models"


def test_config_lists_every_problem_at_once():
    bad = {
        "stack": {"name": "Bad_Name", "colour": "red"},
        "runtimes": [
            {"name": "ok-one", "model": {"name": "m"}, "scaling": {"min_replicas": 5, "max_replicas": 1}},
            {"name": "ok-one", "model": {"name": "m"}, "nodes": {"instance_types": ["m5.large"]}},
            {"name": "x", "type": "invokeai"},
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = "\n".join(info.value.problems)
    assert "stack.name" in text
    assert "stack.colour: unknown key" in text
    assert "min_replicas (5) is above max_replicas (1)" in text
    assert "m5.large" in text and "not GPU instance types" in text
    assert "runtimes.2.type" in text and "runtimes.2.model: required" in text
    assert len(info.value.problems) >= 6


def test_config_duplicate_runtime_names_rejected():
    rt = {"name": "same", "model": {"name": "m"}}
    with pytest.raises(ConfigError, match="unique"):
        parse_config({"runtimes": [rt, rt]})


def test_config_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_invalid_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("runtimes: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_config_model_path_source_needs_path():
    with pytest.raises(ConfigError, match="needs `path:`"):
        parse_config({"runtimes": [{"name": "ab", "model": {"name": "m", "source": "path"}}]})


def test_config_input_buckets_are_bare_names_and_s3_uris_are_normalised():
    base = {"runtimes": [{"name": "rt", "model": {"name": "m"}}]}
    settings = parse_config({**base, "stack": {"input_buckets": ["s3://team-uploads", "partner.drop", "s3://team-uploads/"]}})
    assert settings.stack.input_buckets == ("team-uploads", "partner.drop")
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "stack": {"input_buckets": ["s3://team-uploads/incoming", "Not_A_Bucket"]}})
    text = str(err.value)
    assert "stack.input_buckets" in text and "give a bucket name (`team-uploads`)" in text
    assert "'Not_A_Bucket': not a valid S3 bucket name" in text
