from pathlib import Path

from node.operate.conformance import render, sections

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"


def test_conformance_statement_tables_match_the_profiles() -> None:
    text = DOCUMENT.read_text()
    assert render(text, sections()) == text, (
        "run: python -m node.operate.conformance docs/conformance.md"
    )
    assert (
        "| Computed Radiography Image Storage | 1.2.840.10008.5.1.4.1.1.1 | stored and analysed |"
        in text
    )
    assert "| JPEG 2000 Image Compression (Lossless Only) | 1.2.840.10008.1.2.4.90 |" in text
