"""tools/check_book.py's verdicts from the executed notebooks (the browser part runs only where a
Chromium is installed: python tools/check_book.py after a build)."""

import json
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import check_book  # noqa: E402

SEEN = {"broken": [], "math": 0, "typeset": 0, "tex_errors": [], "tracebacks": [], "error_text": [], "outputs": 3}


def _executed(tmp_path, outputs):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=outputs)]
    path = tmp_path / "05_diffusion.ipynb"
    nbformat.write(nb, path)
    return check_book.executed(path)


def test_a_page_drawing_fewer_figures_or_players_than_its_notebook_fails(tmp_path):
    png = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})
    audio = nbformat.v4.new_output("display_data", data={"text/html": '<audio controls="controls">', "text/plain": ""})
    expected = _executed(tmp_path, [png, png, audio])
    assert (expected["images"], expected["audio"]) == (2, 1)
    assert check_book.judge("05_diffusion", {**SEEN, "figures": 2, "audio": 1}, False, expected) == []
    why = check_book.judge("05_diffusion", {**SEEN, "figures": 1, "audio": 0}, False, expected)
    assert why == ["1 figures drawn, 2 images in the executed notebook", "0 audio players, 1 in the executed notebook"]


def test_the_weights_audit_lists_loaded_files_and_fails_on_a_refused_one(tmp_path, capsys):
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "MANIFEST.json").write_text(json.dumps({"05_unet_standard_12.pt": {}, "08_judge_standard.pt": {}}))
    loaded = nbformat.v4.new_output(
        "stream",
        name="stdout",
        text="device: cpu | weights: pretrained\nunet: loaded the pretrained weights shipped with the course "
        "(05_unet_standard_12.pt: 3000 steps at the standard budget, stored in float16), not trained here\n",
    )
    good = _executed(tmp_path, [loaded])
    assert good["pretrained"] and good["loaded"] == ["05_unet_standard_12.pt"] and good["refused"] == []
    assert check_book.audit_weights({"05_diffusion": good}, folder)
    out = capsys.readouterr().out
    assert "1 of 2 files" in out and "not loaded by a checked page: 08_judge_standard.pt" in out
    refused = nbformat.v4.new_output(
        "stream",
        name="stdout",
        text="judge: the pretrained weights 08_judge_standard.pt are not used: the model differs; this run trains\n",
    )
    bad = _executed(tmp_path, [loaded, refused])
    assert not check_book.audit_weights({"05_diffusion": bad}, folder)
    assert (
        "FAIL: 05_diffusion: judge: the pretrained weights 08_judge_standard.pt are not used" in capsys.readouterr().out
    )
    assert check_book.audit_weights({"00_history": {**bad, "pretrained": False}}, folder)  # a build that trains
