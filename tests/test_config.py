"""One configuration: its defaults are the library's and the command line's, its help is the
CLI's, and it survives the run directory."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

import blockbuster
from blockbuster.cli import build_parser
from blockbuster.config import RunConfig


def _subparser(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]  # type: ignore[index]


@pytest.mark.parametrize("entry", [blockbuster.tile_process, blockbuster.run_tasks])
def test_keyword_defaults_are_the_configs(entry) -> None:
    params = inspect.signature(entry).parameters
    names = {f.name for f in fields(RunConfig)}
    shared = [p for p in params.values() if p.name in names and p.default is not p.empty]
    assert len(shared) >= 8
    for p in shared:
        assert p.default == RunConfig.default(p.name), p.name


def test_cli_defaults_and_help_come_from_the_config(tmp_path) -> None:
    from blockbuster.ui.text import plain

    seg = _subparser("segment")
    args = seg.parse_args(["src", "dst", "--tile", "8,8"])
    for name, flag in RunConfig.flags().items():
        if name == "tile_shape":
            continue
        assert getattr(args, name) == RunConfig.default(name), name
        action = next(a for a in seg._actions if flag in a.option_strings)
        # the config's help in plain text, then the default (tests/test_cli.py checks it)
        assert (action.help or "").startswith(plain(RunConfig.field(name).metadata["help"]))
    # the words the CLI spells differently
    args = seg.parse_args(["s", "d", "--tile", "8,8", "--host", "auto", "--status-page", "off"])
    assert args.host is None and args.status_page is None
    args = seg.parse_args(["s", "d", "--tile", "4,8,8", "--overlap", "1,2,2", "--level", "-1"])
    assert args.tile_shape == (4, 8, 8) and args.overlap == (1, 2, 2) and args.level == -1


def test_resubmit_flags_keep_the_runs_values_unless_given() -> None:
    rs = _subparser("resubmit")
    args = rs.parse_args(["run"])
    assert not hasattr(args, "num_workers") and not hasattr(args, "timeout")
    args = rs.parse_args(["run", "--workers", "3", "--backend", "serial"])
    assert args.num_workers == 3 and args.backend == "serial"


def test_json_round_trip_and_unknown_keys() -> None:
    config = RunConfig(tile_shape=(8, 16), overlap=(1, 2), gpus=("0", "1"), host=None)
    assert RunConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match=r"unknown parameters \['workers'\]"):
        RunConfig.from_json({"workers": 2})


def test_every_field_is_documented() -> None:
    for f in fields(RunConfig):
        assert len(f.metadata["help"]) > 20, f.name
    assert "timeout" in (blockbuster.tile_process.__doc__ or "")
    assert "Default: 3600.0." in " ".join((blockbuster.tile_process.__doc__ or "").split())
