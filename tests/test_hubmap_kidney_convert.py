"""HuBMAP Hacking the Kidney converter: what the download's CSVs must not hold."""
import csv

from nnunet_vasculature.cli import main
from nnunet_vasculature.synthetic.hubmap_kidney import synthesize


def test_a_second_train_csv_row_for_a_slide_is_refused(tmp_path, capsys):
    """train.csv has one encoding per slide; a second row once replaced the first silently."""
    kaggle = synthesize(tmp_path / "kaggle", seed=1, n_train=2, n_test=1, size=256)
    with open(kaggle / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    rows.append([rows[1][0], ""])
    with open(kaggle / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    raw = tmp_path / "raw"
    raw.mkdir()
    assert main(["convert", "hubmap-kidney", str(kaggle), "-d", "641", "-o", str(raw)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {kaggle / 'train.csv'}:{len(rows)}: a second row for id {rows[1][0]} (first on line 2)"]
    assert list(raw.iterdir()) == []


def test_a_truncated_slide_is_one_line_and_nothing_is_written(tmp_path, capsys):
    """A slide whose TIFF header reads but whose pixel data is cut off once ended in tifffile's traceback."""
    kaggle = synthesize(tmp_path / "kaggle", seed=1, n_train=2, n_test=1, size=256)
    slide = sorted((kaggle / "train").glob("*.tiff"))[0]
    slide.write_bytes(slide.read_bytes()[:slide.stat().st_size // 2])
    raw = tmp_path / "raw"
    raw.mkdir()
    assert main(["convert", "hubmap-kidney", str(kaggle), "-d", "642", "-o", str(raw)]) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(slide) in errors[0] and "truncated or corrupt" in errors[0]
    assert "Traceback" not in stderr and list(raw.iterdir()) == []
