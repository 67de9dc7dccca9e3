from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from node.config import (
    CompletionConfig,
    Config,
    Destination,
    DicomConfig,
    ModelConfig,
    ServiceConfig,
    StorageConfig,
    WorkerConfig,
    load_config,
)
from node.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mura-node.toml"
    path.write_text(text)
    return path


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={})
    assert config == Config()
    assert config.dicom.port == 11112
    assert config.database_url == f"sqlite:///{tmp_path / 'mura-node-data' / 'mura-node.db'}"


def test_default_file_in_working_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[dicom]\nae_title = "HOSPITAL_AI"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(None, environ={}).dicom.ae_title == "HOSPITAL_AI"


def test_example_file_documents_every_key_with_its_default() -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    defaults = Config()
    for section in (
        "dicom",
        "storage",
        "database",
        "completion",
        "service",
        "model",
        "worker",
        "dispatch",
        "metrics",
    ):
        documented = example[section]
        expected = getattr(defaults, section)
        assert set(documented) == set(expected.__dataclass_fields__), section
        for key, value in documented.items():
            actual = getattr(expected, key)
            normalised = tuple(actual) if isinstance(actual, tuple) else actual
            if isinstance(value, dict):
                value = dict(value)
            normalised = str(normalised) if isinstance(normalised, Path) else normalised
            assert (tuple(value) if isinstance(value, list) else value) == normalised, (
                f"{section}.{key}"
            )
    config = load_config(ROOT / "config.example.toml", environ={})
    assert config.destinations == ()


def test_file_and_environment_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[dicom]
port = 4242
accepted_calling_ae_titles = ["PACS"]
[completion]
quiet_period_s = 30
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104
""",
    )
    config = load_config(
        path,
        environ={
            "MURA_NODE_DICOM__PORT": "4343",
            "MURA_NODE_DICOM__ACCEPTED_CALLING_AE_TITLES": "PACS, CT1",
            "MURA_NODE_DICOM__REQUIRE_CALLED_AE_TITLE": "false",
            "MURA_NODE_DATABASE__URL": "postgresql://mura@db/mura",
            "UNRELATED": "x",
        },
    )
    assert config.dicom.port == 4343
    assert config.dicom.accepted_calling_ae_titles == ("PACS", "CT1")
    assert config.dicom.require_called_ae_title is False
    assert config.completion.quiet_period_s == 30.0
    assert config.database_url == "postgresql://mura@db/mura"
    assert config.destinations == (Destination("pacs", "PACS", "10.0.0.5", 104),)


def test_release_trigger_keys_from_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[completion]\nrelease_trigger_aes = ["ORTHANC"]\nrelease_settle_s = 2\n'
    )
    config = load_config(path, environ={})
    assert config.completion.release_trigger_aes == ("ORTHANC",)
    assert config.completion.release_settle_s == 2.0
    assert load_config(None, environ={}).completion.release_trigger_aes == ()
    overridden = load_config(
        path, environ={"MURA_NODE_COMPLETION__RELEASE_TRIGGER_AES": "ORTHANC, ROUTER"}
    )
    assert overridden.completion.release_trigger_aes == ("ORTHANC", "ROUTER")
    padded = CompletionConfig(release_trigger_aes=("ORTHANC ",))
    assert padded.release_trigger_aes == ("ORTHANC",)  # compared as peers send it, unpadded


def test_destination_objects_default_to_every_kind_and_can_be_chosen(tmp_path: Path) -> None:
    destination = '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 104\n'
    config = load_config(write(tmp_path, destination), environ={})
    assert config.destinations[0].objects == ("sr", "sc", "summary")
    chosen = load_config(
        write(tmp_path, destination + 'objects = ["summary", "gsps"]\n'), environ={}
    )
    assert chosen.destinations[0].objects == ("summary", "gsps")


def test_destinations_from_environment() -> None:
    config = load_config(
        None,
        environ={"MURA_NODE_DESTINATIONS": '[{name="a", ae_title="A", host="h", port=104}]'},
    )
    assert config.destinations == (Destination("a", "A", "h", 104),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[dicom]\nprot = 1\n", "unknown key 'dicom.prot'"),
        ("[dicoms]\nport = 1\n", "unknown key 'dicoms'"),
        ('[dicom]\nport = "eleven"\n', "dicom.port: expected an integer, got a string 'eleven'"),
        ("[dicom]\nport = 70000\n", "dicom.port: must be between 1 and 65535, got 70000"),
        ("[dicom]\nport = true\n", "dicom.port: expected an integer"),
        ('[dicom]\nae_title = "WAY_TOO_LONG_AE_TITLE"\n', "dicom.ae_title: at most 16 characters"),
        (
            "[completion]\nquiet_period_s = -1\n",
            "completion.quiet_period_s: must be greater than 0",
        ),
        (
            "[completion]\nquiet_period_s = 100\nforce_complete_s = 10\n",
            "completion.force_complete_s",
        ),
        (
            '[completion]\nrelease_trigger_aes = ["ORTHANC", "A\\\\B"]\n',
            "completion.release_trigger_aes[1]: only printable ASCII without backslash",
        ),
        (
            '[completion]\nrelease_trigger_aes = ["WAY_TOO_LONG_AE_TITLE"]\n',
            "completion.release_trigger_aes[0]: at most 16 characters",
        ),
        (
            '[completion]\nrelease_trigger_aes = ["ORTHANC"]\nrelease_settle_s = 0\n',
            "completion.release_settle_s: must be greater than 0",
        ),
        ('[service]\nlog_level = "LOUD"\n', "service.log_level"),
        ('[[destinations]]\nname = "x"\n', "destinations[0]: missing key(s) ae_title, host, port"),
        ("[dicom\n", "is not valid TOML"),
        (
            '[dicom.peer_addresses]\nPACS = ["10.0.0.300"]\n',
            "dicom.peer_addresses.PACS: '10.0.0.300' is not an IP address or network",
        ),
        (
            '[dicom]\naccepted_calling_ae_titles = ["CT1"]\n[dicom.peer_addresses]\nPACS = ["10.0.0.1"]\n',
            "dicom.peer_addresses.PACS: 'PACS' is not in dicom.accepted_calling_ae_titles",
        ),
        ('[dicom]\ntls_certificate = "server.pem"\n', "go together"),
        (
            '[dicom]\ntls_certificate = "s.pem"\ntls_private_key = "s.key"\n'
            'tls_client_certificates = "required"\n',
            "dicom.tls_client_ca: needed to verify client certificates",
        ),
        ('[dicom]\ntls_client_certificates = "sometimes"\n', "must be none, optional or required"),
        ("[dicom]\nmax_dataset_bytes = -1\n", "dicom.max_dataset_bytes: must be 0"),
        ("[storage]\nmin_free_bytes = -5\n", "storage.min_free_bytes: must be 0 or more"),
        ("[worker]\nmax_crashes = 0\n", "worker.max_crashes: must be at least 1"),
        (
            '[model]\ndecode_device = "gpu"\n',
            "model.decode_device: must be auto, cpu or cuda, got 'gpu'",
        ),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 104\ntls_ca = "ca.pem"\n',
            "destinations[0]: TLS files are set but tls = false",
        ),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 104\n'
            'objects = ["sr", "pdf"]\n',
            'destinations[0].objects: a non-empty list of "sr", "sc", "summary", "gsps", got',
        ),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 104\nobjects = []\n',
            "destinations[0].objects: a non-empty list of",
        ),
    ],
)
def test_invalid_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MURA_NODE_DICOM__PORT": "abc"}, "MURA_NODE_DICOM__PORT: expected an integer"),
        ({"MURA_NODE_DICOM__PROT": "1"}, "unknown key 'dicom.prot'"),
        ({"MURA_NODE_PORT": "1"}, "MURA_NODE_PORT: unknown environment variable"),
        ({"MURA_NODE_DICOM__REQUIRE_CALLED_AE_TITLE": "maybe"}, "expected true or false"),
        ({"MURA_NODE_DICOM__PORT": "0"}, "dicom.port: must be between 1 and 65535, got 0"),
    ],
)
def test_invalid_environment_names_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=environ)
    assert message in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*missing\.toml"):
        load_config(tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "[dicom]\nport = 99999\n",
            "mura-node: configuration error: dicom.port: must be between 1 and 65535",
        ),
        (None, "mura-node: configuration error: cannot read configuration file"),
    ],
)
def test_cli_reports_one_line_and_exits_2(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    if content is not None:
        path.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "node", "status", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(expected)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DicomConfig(port=70000), "dicom.port: must be between 1 and 65535, got 70000"),
        (lambda: DicomConfig(ae_title="WAY_TOO_LONG_AE_TITLE"), "dicom.ae_title: at most 16"),
        (
            lambda: DicomConfig(peer_addresses={"PACS": ("10.0.0.300",)}),
            "dicom.peer_addresses.PACS: '10.0.0.300' is not an IP address or network",
        ),
        (
            lambda: CompletionConfig(quiet_period_s=100, force_complete_s=10),
            "completion.force_complete_s",
        ),
        (
            lambda: CompletionConfig(release_trigger_aes=("ORTHANC", "  ")),
            "completion.release_trigger_aes[1]: must not be empty",
        ),
        (lambda: ServiceConfig(log_level="LOUD"), "service.log_level"),
        (lambda: ModelConfig(thresholds={"knee": 0.5}), "model.thresholds.knee: unknown"),
        (lambda: WorkerConfig(max_crashes=0), "worker.max_crashes: must be at least 1"),
        (lambda: StorageConfig(min_free_bytes=-5), "storage.min_free_bytes: must be 0 or more"),
        (
            lambda: Destination("p", "P", "h", 104, tls_ca="ca.pem"),
            "destination: TLS files are set but tls = false",
        ),
        (
            lambda: Config(
                destinations=(Destination("a", "A", "h", 104), Destination("a", "B", "h", 105))
            ),
            "destinations[1].name: duplicate destination name 'a'",
        ),
    ],
)
def test_a_configuration_built_in_code_is_checked_the_same_way(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert message in str(info.value)


def test_replacing_a_value_checks_it_again() -> None:
    with pytest.raises(ConfigError, match=r"dicom\.port: must be between 1 and 65535, got 0"):
        dataclasses.replace(Config().dicom, port=0)


def test_a_destination_loaded_from_a_file_is_named_by_its_index(tmp_path: Path) -> None:
    text = '[[destinations]]\nname = "ok"\nae_title = "OK"\nhost = "h"\nport = 1\n' + (
        '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 0\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert str(info.value) == "destinations[1].port: must be between 1 and 65535, got 0"


def test_a_built_configuration_cannot_change(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[dicom.peer_addresses]\nPACS = ["10.0.0.1"]\n'
            '[service.log_levels]\n"node.receive.scp" = "DEBUG"\n'
            "[model.thresholds]\nwrist = 0.45\n",
        ),
        environ={},
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dicom.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.model.thresholds["wrist"] = 0.9  # type: ignore[index]
    with pytest.raises(TypeError):
        config.service.log_levels["node"] = "ERROR"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.dicom.peer_addresses["CT1"] = ("10.0.0.2",)  # type: ignore[index]
    assert config.dicom.peer_addresses == {"PACS": ("10.0.0.1",)}
    assert config.model.thresholds == {"wrist": 0.45}


def test_values_given_as_lists_and_dicts_in_code_are_frozen() -> None:
    thresholds = {"wrist": 0.4}
    model = ModelConfig(cards=["a.json"], thresholds=thresholds)  # type: ignore[arg-type]
    thresholds["wrist"] = 0.9  # the caller's dict is copied, not shared
    assert model.cards == ("a.json",) and model.thresholds == {"wrist": 0.4}
    destination = Destination("p", "P", "h", 104, objects=["sr"])  # type: ignore[arg-type]
    assert destination.objects == ("sr",)


def test_a_configuration_pickles_for_the_child_processes(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[dicom.peer_addresses]\nPACS = ["10.0.0.0/8"]\n[model.thresholds]\nhand = 0.3\n',
        ),
        environ={},
    )
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    with pytest.raises(TypeError):
        copy.model.thresholds["hand"] = 0.5
