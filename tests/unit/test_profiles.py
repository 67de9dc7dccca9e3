from pathlib import Path

import pytest

from node.errors import ProfileError
from node.profiles import Role, StorageProfile, Vocabulary, load_storage_profile, load_vocabulary
from tests.support.factory import BASIC_TEXT_SR, CR, DX_PRESENTATION, DX_PROCESSING


def test_storage_profile_roles(profile: StorageProfile) -> None:
    assert profile.analysed == (CR, DX_PRESENTATION, DX_PROCESSING)
    assert profile.role(BASIC_TEXT_SR) is Role.IGNORE
    assert profile.role("1.2.840.10008.5.1.4.1.1.88.33") is Role.IGNORE  # Comprehensive SR
    assert profile.role("1.2.840.10008.5.1.4.1.1.7") is Role.IGNORE  # Secondary Capture
    assert profile.role("1.2.3.4") is None


def test_storage_profile_transfer_syntaxes(profile: StorageProfile) -> None:
    assert set(profile.transfer_syntaxes) == {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    }


def test_vocabulary_has_every_mura_type(vocabulary: Vocabulary) -> None:
    assert sorted(vocabulary.study_types) == [
        "elbow",
        "finger",
        "forearm",
        "hand",
        "humerus",
        "shoulder",
        "wrist",
    ]
    assert vocabulary.fields[:2] == ("AnatomicRegionSequence", "BodyPartExamined")


def test_malformed_profile_is_reported(tmp_path: Path) -> None:
    (tmp_path / "storage.toml").write_text('[[sop_class]]\nuid = "1.2.3"\nrole = "keep"\n')
    with pytest.raises(ProfileError, match=r"sop_class\[0\].role"):
        load_storage_profile(tmp_path)
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_vocabulary(tmp_path)
