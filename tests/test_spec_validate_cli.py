"""`modelsync validate` on specs whose sample URLs, base_url or names only failed later (at plan
or apply): each is now one `FILE:LINE:COL: path: message` line, exit 1, and nothing is created."""

from __future__ import annotations

import textwrap

import pytest

from tests.cli_helpers import copy_quickstart, run_cli, write_spec

SECRET = "s3cr3t-0123456789"


@pytest.fixture
def project(tmp_path):
    return copy_quickstart(tmp_path / "qs")


def refused(project, text: str, command: str = "validate") -> list[str]:
    """Run ``command`` on the spec ``text``; it must fail with spec errors only and leave no trace."""
    write_spec(project, textwrap.dedent(text))
    result = run_cli(project, command)
    assert result.code == 1, result
    assert "Traceback" not in result.err and "internal error" not in result.err
    assert not (project / ".modelsync").exists() and not (project / "modelsync.lock").exists()
    return result.err.splitlines()


def two_classes(circle: str, square: str = "data/square/") -> str:
    return f"""\
    version: 1
    models:
      shapes:
        classes:
          circle:
            samples:
              - {circle}
          square:
            samples:
              - {square}
    """


# -- 1. file:// URLs ---------------------------------------------------------------------


def test_file_url_with_a_host_is_refused_not_read_as_the_spec_directory(project):
    text = two_classes("file://relative.png", "file://somehost/tmp/x.png")
    expected = [
        "modelsync.yaml:7:13: models.shapes.classes.circle.samples[0]: a file URL takes no host: "
        "write file:///absolute/path (or a path relative to the spec, without file://), got 'file://relative.png'",
        "modelsync.yaml:10:13: models.shapes.classes.square.samples[0]: a file URL takes no host: "
        "write file:///absolute/path (or a path relative to the spec, without file://), "
        "got 'file://somehost/tmp/x.png'",
    ]
    assert refused(project, text) == expected
    assert refused(project, text, "plan") == expected  # plan uploads nothing either
    assert refused(project, two_classes("data/circle/", "{path: 'file://data/square'}")) == [
        "modelsync.yaml:10:20: models.shapes.classes.square.samples[0].path: a file URL takes no host: "
        "write file:///absolute/path (or a path relative to the spec, without file://), got 'file://data/square'",
    ]


def test_file_url_without_a_path_and_the_accepted_forms(project):
    assert refused(project, two_classes("file://", "{url: 'file://localhost'}")) == [
        "modelsync.yaml:7:13: models.shapes.classes.circle.samples[0]: a file URL needs an absolute path: "
        "write file:///absolute/path, got 'file://'",
        "modelsync.yaml:10:19: models.shapes.classes.square.samples[0].url: a file URL needs an absolute path: "
        "write file:///absolute/path, got 'file://localhost'",
    ]
    circle, square = project / "data" / "circle", project / "data" / "square"
    write_spec(project, textwrap.dedent(two_classes(f"file://{circle}/*.png", f"file://localhost{square}/")))
    result = run_cli(project, "validate")
    assert (result.code, result.out) == (0, "modelsync.yaml: valid (1 model).\n"), result


# -- 2. names ----------------------------------------------------------------------------


def test_empty_blank_and_control_character_names_are_refused(project):
    text = """\
    version: 1
    models:
      shapes:
        title: "  "
        training: {auto: false}
        classes:
          "": {samples: [data/circle/]}
          " ": {samples: [data/square/]}
          "a\\nb": {samples: [data/square/a.png]}
      "": {classes: {x: {samples: [data/square/]}}, training: {auto: false}}
      "tab\\there": {classes: {x: {samples: [data/square/]}}, training: {auto: false}}
    """
    assert refused(project, text) == [
        "modelsync.yaml:4:12: models.shapes.title: title must not be only whitespace",
        'modelsync.yaml:7:7: models.shapes.classes[""]: class name must not be empty',
        'modelsync.yaml:8:7: models.shapes.classes[" "]: class name must not be only whitespace',
        'modelsync.yaml:9:7: models.shapes.classes["a\\nb"]: class name must not contain control characters '
        "(found U+000A)",
        'modelsync.yaml:9:26: models.shapes.classes["a\\nb"].samples[0]: no such file: data/square/a.png',
        'modelsync.yaml:10:3: models[""]: model key must not be empty',
        'modelsync.yaml:11:3: models["tab\\there"]: model key must not contain control characters (found U+0009)',
    ]


def test_a_message_that_quotes_a_bad_name_stays_one_line(project):
    text = """\
    version: 1
    models:
      shapes:
        classes:
          "x\\u2028y": {samples: []}
          square: {samples: [data/square/]}
    """
    assert refused(project, text) == [
        'modelsync.yaml:5:7: models.shapes.classes["x\\u2028y"]: class name must not contain control characters '
        "(found U+2028)",
        'modelsync.yaml:5:29: models.shapes.classes["x\\u2028y"].samples: class \'x\\u2028y\' has no samples',
    ]


# -- 3. URL syntax: sample URLs and base_url ----------------------------------------------


def test_malformed_sample_urls_fail_validate_not_plan(project):
    text = """\
    version: 1
    models:
      shapes:
        classes:
          circle:
            samples:
              - http://[::1/x.png
              - http://
              - {url: "https://example.org:99999/x.png"}
          square:
            samples:
              - {url: "http://example.org:port/x.png"}
    """
    expected = [
        "modelsync.yaml:7:13: models.shapes.classes.circle.samples[0]: the URL's host is malformed "
        "(an IPv6 address goes in [brackets]), got 'http://[::1/x.png'",
        "modelsync.yaml:8:13: models.shapes.classes.circle.samples[1]: the URL has no host, got 'http://'",
        "modelsync.yaml:9:19: models.shapes.classes.circle.samples[2].url: the URL's port must be a number "
        "from 1 to 65535, got 'https://example.org:99999/x.png'",
        "modelsync.yaml:12:19: models.shapes.classes.square.samples[0].url: the URL's port must be a number "
        "from 1 to 65535, got 'http://example.org:port/x.png'",
    ]
    assert refused(project, text) == expected
    assert refused(project, text, "plan") == expected


BASE_URLS = """\
version: 1
providers:
  lab: {type: local}
  prod:
    type: astica
    api_key: ${env:MS_TEST_KEY}
    base_url: "http://127.0.0.1:notaport"
  env:
    type: autogon
    api_key: ${env:MS_TEST_KEY}
    base_url: ${env:MS_TEST_URL}
  part:
    type: scenario
    api_key: ${env:MS_TEST_KEY}
    base_url: "http://${env:MS_TEST_HOST}/v1"
models:
  shapes:
    provider: lab
    classes:
      circle: {samples: [data/circle/]}
      square: {samples: [data/square/]}
"""


def test_base_url_syntax_is_checked_and_a_value_from_the_environment_is_not_shown(project, monkeypatch):
    monkeypatch.setenv("MS_TEST_KEY", SECRET)
    monkeypatch.setenv("MS_TEST_URL", f"https://user:{SECRET}@[::1:8700")
    monkeypatch.setenv("MS_TEST_HOST", "")
    lines = refused(project, BASE_URLS)
    assert lines == [
        "modelsync.yaml:7:15: providers.prod.base_url: the URL's port must be a number from 1 to 65535, "
        "got 'http://127.0.0.1:notaport'",
        "modelsync.yaml:11:15: providers.env.base_url: the URL's host is malformed "
        "(an IPv6 address goes in [brackets]), got the value of ${env:MS_TEST_URL}",
        "modelsync.yaml:15:15: providers.part.base_url: the URL has no host, "
        "got the value of http://${env:MS_TEST_HOST}/v1",
    ]
    assert not any(SECRET in line for line in lines)


# -- 4. every problem at once --------------------------------------------------------------


def test_every_training_config_problem_is_checked():
    """The trainer's own check lists them all; parse_config still raises the first."""
    from reconciler.local.trainer import TrainingError, parse_config
    from reconciler.local.trainer.config import config_problems

    config = {"steps": 0, "learning_rate": -1, "stpes": 3}
    problems = [
        "training.config.stpes: unknown key (known: batch_size, holdout, l2, learning_rate, seed, steps)",
        "training.config.steps: expected a positive integer, got 0",
        "training.config.learning_rate: expected a positive number, got -1",
    ]
    assert config_problems(config) == problems
    with pytest.raises(TrainingError, match=problems[0].replace("(", r"\(").replace(")", r"\)")):
        parse_config(config)
    assert config_problems({"steps": 5, "learning_rate": 0.5}) == []


def test_validate_reports_every_training_config_problem(project):
    text = """\
    version: 1
    models:
      shapes:
        classes:
          circle: {samples: [data/circle/]}
          square: {samples: [data/square/]}
        training:
          config: {steps: 0, learning_rate: -1}
    """
    assert refused(project, text) == [
        "modelsync.yaml:8:23: models.shapes.training.config.steps: expected a positive integer, got 0",
        "modelsync.yaml:8:41: models.shapes.training.config.learning_rate: expected a positive number, got -1",
    ]


def test_a_nul_in_a_sample_path_is_a_spec_error_not_an_internal_error(project):
    lines = refused(project, two_classes("file:///tmp/a%00.png", '"data/a\\0.png"'))
    assert lines[0].startswith("modelsync.yaml:7:13: models.shapes.classes.circle.samples[0]: the URL's path must not")
    assert lines[1].startswith(
        "modelsync.yaml:10:13: models.shapes.classes.square.samples[0]: a sample path must not contain control"
    )
    assert len(lines) == 2
    assert refused(project, two_classes("{path: \"data/b\\0.png\"}"), "plan")[0].startswith(
        "modelsync.yaml:7:20: models.shapes.classes.circle.samples[0].path: a sample path must not contain control"
    )


def test_a_typo_does_not_hide_a_missing_file(project):
    text = """\
    version: 1
    models:
      a:
        titel: A
        classes:
          circle: {samples: [data/circle/]}
          square: {samples: [data/square/]}
      b:
        classes:
          circle: {samples: [data/circle/]}
          square: {samples: [data/nothing.png, {path: data/gone/, uid: x}]}
    """
    assert refused(project, text) == [
        "modelsync.yaml:4:5: models.a.titel: unknown key (did you mean 'title'?)",
        "modelsync.yaml:11:26: models.b.classes.square.samples[0]: no such file: data/nothing.png",
        "modelsync.yaml:11:44: models.b.classes.square.samples[1]: no such file: data/gone/",
    ]
