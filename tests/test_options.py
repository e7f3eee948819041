"""Each stage's options are written once (countlens.options): the CLI's flags and the study config's
sections come from them, with the same defaults, and a bad value names its field."""

import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from countlens import cli
from countlens.errors import InputError
from countlens.options import DEFAULT_SCALES, VECTORS, PatchOptions, ProbeOptions, SteerOptions
from countlens.study import config
from countlens.study.stages import STAGES


def _parse(models: dict, *args: str) -> dict:
    """Run a command made by cli.command on `args` and return the instances its body received."""
    got: dict = {}

    def body(as_json: bool, **instances):
        got.update(instances)

    app = typer.Typer()
    app.command("x")(cli.command(models, body, "x", "test"))
    app.command("y")(lambda: None)  # two commands, so typer keeps the command name
    res = CliRunner().invoke(app, ["x", *args])
    if res.exception:
        raise res.exception
    assert res.exit_code == 0, res.output
    return got


def test_flags_left_alone_give_the_models_defaults():
    for st in STAGES:
        required = {f: (typing.get_args(info.annotation) or ("1",))[0] if typing.get_origin(info.annotation) is
                    typing.Literal else "1" for f, info in st.inputs.model_fields.items() if info.is_required()}
        args = [a for f, v in required.items() for a in (f"--{f.replace('_', '-')}", v)]
        got = _parse({"i": st.inputs, "o": st.options}, *args)
        assert got["o"] == st.options(), st.name


def test_every_shown_default_means_the_models_default():
    """What --help shows as a default ("1GB", "both", "denoise", "-2,-1,...") parses to the field's default."""
    for st in STAGES:
        command = cli.stage_command(st)
        shown = {p.name: p.default.default for p in command.__signature__.parameters.values()}
        for field, info in st.options.model_fields.items():
            if field in shown and shown[field] is not None and not info.is_required():
                assert getattr(st.options(**{field: shown[field]}), field) == info.default, (st.name, field)


def test_flags_parse_into_the_model():
    got = _parse({"o": PatchOptions}, "--sites", "resid,attn", "--direction", "both", "--memory-budget", "512MB",
                 "--layers", "emb,0", "--generate")
    assert got["o"] == PatchOptions(sites=("resid", "attn"), directions=("denoise", "noise"),
                                    memory_budget=512 << 20, layers=("emb", "0"), generate=True)
    got = _parse({"o": SteerOptions}, "--scales", "1,2", "--vector", "mean-diff", "--no-generate")
    assert got["o"].scales == (0.0, 1.0, 2.0) and got["o"].vectors == ("mean-diff", "one-more", "random")
    assert got["o"].generate is False
    assert set(SteerOptions().vectors) == set(VECTORS) and SteerOptions().scales == DEFAULT_SCALES
    assert SteerOptions(layers=(1, "emb")).layers == ("1", "emb")  # one layer convention: names


@pytest.mark.parametrize("make, field, text", [
    (lambda: PatchOptions(sites="resid,x"), "sites", "input should be"),
    (lambda: PatchOptions(memory_budget="lots"), "memory_budget", "memory budget must look like 1gb"),
    (lambda: SteerOptions(scales="1,a"), "scales", "scales must be numbers"),
    (lambda: ProbeOptions(folds=0), "folds", "greater than or equal to 1"),
    (lambda: PatchOptions(bogus=1), "bogus", "extra inputs are not permitted"),
])
def test_a_bad_value_is_one_input_error_naming_the_field(make, field, text):
    with pytest.raises(InputError) as e:
        make()
    assert e.value.field.split(".")[0] == field and text in str(e.value).lower()


def test_study_sections_are_made_from_the_stage_options():
    """Same fields and defaults as the stage's Options, except the keys the study sets for all stages and
    the study's own choices."""
    pairs = [(config.PatchConfig, PatchOptions, {"template", "memory_budget"},
              {"sites", "positions", "component_positions", "generate"}),
             (config.SteerConfig, SteerOptions, {"template", "memory_budget", "directions"}, {"scales", "vectors"}),
             (config.ProbeConfig, ProbeOptions, {"template"}, {"sites", "positions"})]
    for section, options, dropped, chosen in pairs:
        fields = section.model_fields
        assert not dropped & set(fields)
        for key, info in options.model_fields.items():
            if key not in dropped | chosen:
                assert fields[key].default == info.default, (section.__name__, key)
    assert config.PatchConfig().sites == ("resid", "attn", "mlp", "head")
    with pytest.raises(InputError, match="field 'patch.sites.1'"):
        config.build_config(patch={"sites": ["resid", "x"]})


def test_cli_is_parsing_and_display_only():
    assert len(Path(cli.__file__).read_text().splitlines()) <= 300
