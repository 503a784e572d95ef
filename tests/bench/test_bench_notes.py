"""A benchmark README keeps its hand-written NOTES.md across re-renders."""

from __future__ import annotations

from pathlib import Path

from autoprune.bench.report import write_readme


def test_readme_appends_notes_after_the_rendered_tables(tmp_path: Path) -> None:
    (tmp_path / "NOTES.md").write_text("## Reading the numbers\n\nuniform wins.\n")
    write_readme(tmp_path, "# bench\n\n| a |\n")
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# bench\n\n| a |\n")
    assert text.endswith("## Reading the numbers\n\nuniform wins.\n")
    # a second render replaces the README instead of stacking the notes twice
    write_readme(tmp_path, "# bench\n\n| b |\n")
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Reading the numbers") == 1
    assert "| a |" not in text


def test_readme_without_notes_is_the_rendered_text(tmp_path: Path) -> None:
    write_readme(tmp_path, "# bench\n")
    assert (tmp_path / "README.md").read_text() == "# bench\n"
