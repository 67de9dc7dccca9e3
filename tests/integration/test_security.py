"""Access control, DICOM TLS, resource limits, data at rest and retention (docs/security.md)."""

from __future__ import annotations

import logging
import socket
import ssl
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.config import Config, Destination, ModelConfig
from node.db import Instance, Study
from node.deliver.dispatch import Dispatcher
from node.inference.engine import InferenceEngine
from node.operate.retention import purge_delivered
from node.operate.service import Node
from node.work.worker import build_worker
from tests.support import destination as dest
from tests.support.factory import CR, dcmtk_env, make_radiograph, storescu, write, write_study
from tests.support.nodes import FakeClock
from tests.support.senders import pynetdicom_send
from tests.support.tls import Certificates, make_certificates


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def stored(node: Node) -> int:
    with Session(node.engine) as session:
        return len(session.scalars(select(Instance)).all())


# --- access control ----------------------------------------------------------------------


def test_calling_ae_title_bound_to_source_addresses(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node(
        dicom={
            "accepted_calling_ae_titles": ("PACS", "CT1"),
            "peer_addresses": {"PACS": ("10.20.30.40", "192.168.0.0/16")},
        }
    )
    path = write(make_radiograph(), tmp_path / "a.dcm")
    refused = storescu(node.scp.port, [path], "-v", calling="PACS")  # right title, wrong address
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stderr
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert stored(node) == 0
    assert storescu(node.scp.port, [path], calling="CT1").returncode == 0  # not bound
    assert stored(node) == 1


def test_calling_ae_title_accepted_from_its_network(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node(dicom={"peer_addresses": {"PACS": ("127.0.0.0/8",)}})
    path = write(make_radiograph(), tmp_path / "a.dcm")
    assert storescu(node.scp.port, [path], calling="PACS").returncode == 0
    assert stored(node) == 1


# --- DICOM TLS ----------------------------------------------------------------------------


def tls_node(make_node: Callable[..., Node], certificates: Certificates, **dicom: object) -> Node:
    return make_node(
        dicom={
            "tls_certificate": str(certificates.server_cert),
            "tls_private_key": str(certificates.server_key),
            **dicom,
        }
    )


def client_context(
    trust: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trust))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def tls_echo(port: int, context: ssl.SSLContext, timeout: float = 20.0) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="MURA_NODE", tls_args=(context, "localhost"))
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def tls_storescu(port: int, files: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    command = ["storescu", "-R", "-aet", "MODALITY", "-aec", "MURA_NODE", *tls, "-v"]
    return subprocess.run(
        [*command, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=120,
    )


def test_tls_with_dcmtk_storescu_and_a_client_certificate(
    make_node: Callable[..., Node], certificates: Certificates, tmp_path: Path
) -> None:
    node = tls_node(
        make_node,
        certificates,
        tls_client_ca=str(certificates.ca),
        tls_client_certificates="required",
    )
    files = write_study(tmp_path / "study", 2)
    ca = ["+cf", str(certificates.ca)]
    with_cert = ["+tls", str(certificates.client_key), str(certificates.client_cert), *ca]
    result = tls_storescu(node.scp.port, files, *with_cert)
    assert result.returncode == 0, result.stderr
    assert stored(node) == 2
    anonymous = tls_storescu(node.scp.port, files, "+tla", *ca)  # no client certificate
    assert anonymous.returncode != 0
    plain = tls_storescu(node.scp.port, files)  # no TLS at all
    assert plain.returncode != 0
    assert stored(node) == 2
    # After the refused peers, an honest one is still served.
    assert tls_echo(
        node.scp.port,
        client_context(certificates.ca, certificates.client_cert, certificates.client_key),
    )


def test_start_up_line_says_the_port_speaks_tls(
    make_node: Callable[..., Node], certificates: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="node.operate.service"):
        node = tls_node(
            make_node,
            certificates,
            tls_client_ca=str(certificates.ca),
            tls_client_certificates="required",
        )
        plain = make_node()
    [tls_line, plain_line] = [m for m in caplog.messages if " receiving as MURA_NODE on " in m]
    assert f":{node.scp.port} (DICOM TLS only, client certificate required);" in tls_line
    assert f":{plain.scp.port};" in plain_line


def test_tls_refuses_old_protocols_and_untrusted_servers_are_detected(
    make_node: Callable[..., Node], certificates: Certificates
) -> None:
    node = tls_node(make_node, certificates)
    assert tls_echo(node.scp.port, client_context(certificates.ca))
    old = client_context(certificates.ca)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with pytest.warns(DeprecationWarning):  # as it should be
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    assert not tls_echo(node.scp.port, old)
    # A modality that trusts another CA does not talk to this node (nor to an impostor).
    assert not tls_echo(node.scp.port, client_context(certificates.other_ca))


def test_silent_tls_client_does_not_delay_an_honest_one(
    make_node: Callable[..., Node], certificates: Certificates
) -> None:
    node = tls_node(make_node, certificates, tls_handshake_timeout_s=120.0)
    silent = [socket.create_connection(("127.0.0.1", node.scp.port)) for _ in range(3)]
    try:
        # pynetdicom's own server would complete the silent clients' handshakes on its
        # accepting thread first, for up to the handshake timeout (120 s) each; this client
        # gives up after 15 s.
        assert tls_echo(node.scp.port, client_context(certificates.ca), timeout=15.0)
        for sock in silent:  # still open: they were not simply dropped to make room
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in silent:
            sock.close()


def test_results_are_sent_over_tls_with_a_client_certificate(
    make_node: Callable[..., Node], certificates: Certificates, tmp_path: Path
) -> None:
    pacs_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pacs_context.load_cert_chain(str(certificates.server_cert), str(certificates.server_key))
    pacs_context.load_verify_locations(str(certificates.ca))
    pacs_context.verify_mode = ssl.CERT_REQUIRED
    pacs = dest.Destination(ssl_context=pacs_context)
    pacs.start()
    clock = FakeClock()
    try:
        node = make_node(clock=clock)
        destination = Destination(
            name="pacs",
            ae_title=pacs.ae_title,
            host="localhost",
            port=pacs.port,
            objects=("sr",),
            tls=True,
            tls_ca=str(certificates.ca),
            tls_certificate=str(certificates.client_cert),
            tls_private_key=str(certificates.client_key),
        )
        config = replace(node.config, destinations=(destination,))
        study_uid = process_one_study(node, config, clock, tmp_path)
        dispatcher = Dispatcher(config, clock)
        try:
            assert dispatcher.run_once() == 1
        finally:
            dispatcher.close()
        assert len(pacs.reports(study_uid)) == 1
        assert state_of(node, study_uid) == "DONE"
    finally:
        pacs.stop()


def process_one_study(node: Node, config: Config, clock: FakeClock, tmp_path: Path) -> str:
    files = write_study(tmp_path / "study", 1, body_part="WRIST", rows=64, columns=64)
    assert storescu(node.scp.port, files).returncode == 0
    clock.advance(3600)
    node.scheduler.tick()
    engine = InferenceEngine.from_config(ModelConfig(allow_untrained=True))
    worker = build_worker(config, engine, clock)
    try:
        assert worker.run_once()
        worker.drain()
    finally:
        worker.close()
    return str(dcmread(files[0]).StudyInstanceUID)


def state_of(node: Node, study_uid: str) -> str:
    with Session(node.engine) as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        return study.state


# --- limits ---------------------------------------------------------------------------------


def test_data_set_over_the_maximum_size_gets_a700(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node(dicom={"max_dataset_bytes": 20_000})
    small = write(make_radiograph(rows=32, columns=32), tmp_path / "small.dcm")
    large = write(make_radiograph(rows=128, columns=128), tmp_path / "large.dcm")  # 32 KiB
    assert pynetdicom_send(node, large, CR) == (
        0xA700,
        "data set over the maximum size (20000 bytes)",
    )
    assert storescu(node.scp.port, [small]).returncode == 0
    assert stored(node) == 1
    assert list(node.store.tmp.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB file system (tmpfs) for the data directory."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_free_space_floor_answers_a700_and_recovers(
    make_node: Callable[..., Node], small_disk: Path, tmp_path: Path
) -> None:
    node = make_node(
        storage={"data_dir": small_disk / "data", "min_free_bytes": 2 * 1024 * 1024},
    )
    files = write_study(tmp_path / "study", 3, rows=64, columns=64)
    assert storescu(node.scp.port, files[:1]).returncode == 0
    filler = small_disk / "filler"
    with filler.open("wb") as out:  # another program fills the disk up to 1.5 MiB free
        out.write(b"\0" * (node.store.free_bytes() - 1536 * 1024))
    status, comment = pynetdicom_send(node, files[1], CR)
    assert (status, comment) == (0xA700, "storage nearly full: below the node's free-space floor")
    assert stored(node) == 1
    filler.unlink()  # space comes back: storing resumes without a restart
    assert storescu(node.scp.port, files[1:]).returncode == 0
    assert stored(node) == 3


# --- data at rest and retention -----------------------------------------------------------


def test_data_directory_and_database_are_private_to_the_service_user(tmp_path: Path) -> None:
    from tests.support.serve import Serve

    serve = Serve(tmp_path)
    serve.start()
    try:
        files = write_study(tmp_path / "study", 2)
        assert storescu(serve.port, files).returncode == 0
    finally:
        code, output = serve.stop()
    assert code == 0, output
    data = tmp_path / "data"
    paths = [data, *data.rglob("*")]
    assert any(p.name == "mura-node.db" for p in paths)
    assert sum(p.suffix == ".dcm" for p in paths) == 2
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"


def test_delivered_studies_are_purged_after_the_retention_period(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    pacs = dest.Destination()
    pacs.start()
    clock = FakeClock()
    try:
        node = make_node(clock=clock)
        destination = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
        config = replace(node.config, destinations=(destination,))
        delivered = process_one_study(node, config, clock, tmp_path / "a")
        dispatcher = Dispatcher(config, clock)
        try:
            assert dispatcher.run_once() == 3  # the SR, the heatmap, the summary image
        finally:
            dispatcher.close()
        assert state_of(node, delivered) == "DONE"
        # A study whose results could not be delivered yet is kept, whatever its age.
        waiting = process_one_study(node, config, clock, tmp_path / "b")
        ignored = write_study(tmp_path / "c", 1, body_part="CHEST")
        assert storescu(node.scp.port, ignored).returncode == 0
        clock.advance(3600)
        node.scheduler.tick()
        files_before = sorted(p for p in node.store.root.rglob("*.dcm"))
        # Each analysed study: image, SR, heatmap, summary image; and the chest image.
        assert len(files_before) == 9

        retention = timedelta(days=7)
        assert purge_delivered(node.engine, node.store, retention, clock) == 0  # too early
        clock.advance(timedelta(days=7, seconds=1).total_seconds())
        assert purge_delivered(node.engine, node.store, retention, clock) == 2
        assert purge_delivered(node.engine, node.store, retention, clock) == 0  # once only
        with Session(node.engine) as session:
            studies = {s.study_instance_uid: s for s in session.scalars(select(Study))}
            assert studies[delivered].purged_at is not None
            assert studies[waiting].purged_at is None and studies[waiting].state == "DISPATCHING"
            kept = {i.file_path for i in session.scalars(select(Instance)) if i.file_path}
        assert len(kept) == 1  # the waiting study's image
        remaining = sorted(p for p in node.store.root.rglob("*.dcm"))
        assert len(remaining) == 4  # its image, its SR, its heatmap and its summary image
    finally:
        pacs.stop()


def test_missing_tls_file_stops_the_node_with_a_clear_message(tmp_path: Path) -> None:
    from node.errors import ConfigError
    from tests.support.nodes import node_config

    config = node_config(tmp_path)
    config = replace(
        config,
        dicom=replace(
            config.dicom,
            tls_certificate=str(tmp_path / "missing.pem"),
            tls_private_key=str(tmp_path / "missing.key"),
        ),
    )
    with pytest.raises(ConfigError, match=r"cannot load dicom.tls_certificate .*missing\.pem"):
        Node(config)
