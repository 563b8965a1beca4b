"""`cxrvlp text parse | label | tokenizer` end to end."""

import json

from cxrvlp.cli import main

REPORT = (
    "FINDINGS: Small left pleural effusion. No pneumothorax or focal consolidation. "
    "Endotracheal tube terminates 4 cm above the carina. "
    "IMPRESSION: Left basilar opacity may represent atelectasis."
)


def test_parse_prints_triplets_and_chexpert_labels(capsys):
    assert main(["text", "parse", REPORT]) == 0
    result = json.loads(capsys.readouterr().out)
    found = {(t["finding"], t["existence"]) for t in result["triplets"]}
    assert ("pleural effusion", "present") in found
    assert ("pneumothorax", "absent") in found and ("consolidation", "absent") in found
    assert ("atelectasis", "uncertain") in found
    effusion = next(t for t in result["triplets"] if t["finding"] == "pleural effusion")
    assert effusion["severity"] == "small" and effusion["region"].startswith("left")
    assert set(effusion) >= {"finding", "region", "existence", "severity", "sentence"}
    labels = result["chexpert"]
    assert labels["Pleural Effusion"] == 1.0 and labels["Pneumothorax"] == 0.0
    assert labels["Atelectasis"] == -1.0 and labels["Support Devices"] == 1.0
    assert labels["No Finding"] is None


def test_label_text_and_jsonl_files(tmp_path, capsys):
    text_file = tmp_path / "reports.txt"
    text_file.write_text(f"{REPORT}\n\nThe lungs are clear. No pleural effusion.\n")
    out = tmp_path / "labels.jsonl"
    assert main(["text", "label", str(text_file), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["line"] for row in rows] == [1, 3]
    assert rows[1]["chexpert"]["No Finding"] == 1.0
    jsonl = tmp_path / "reports.jsonl"
    jsonl.write_text(
        json.dumps({"text": REPORT}) + "\n{broken json\n" + json.dumps({"t": 1}) + "\n"
    )
    assert main(["text", "label", str(jsonl), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 lines skipped" in captured.out
    assert "reports.jsonl:2" in captured.err and "reports.jsonl:3" in captured.err
    assert len(out.read_text().splitlines()) == 1
    assert main(["text", "label", str(tmp_path / "absent.txt"), "--out", str(out)]) == 2


def test_tokenizer_command_trains_a_loadable_vocabulary(tmp_path, capsys):
    from cxrvlp.text.tokenizer import load_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([REPORT, "No acute cardiopulmonary process."] * 30) + "\n")
    out = tmp_path / "tokenizer"
    argv = ["text", "tokenizer", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "200"]
    assert main([*argv, "--min-frequency", "1"]) == 0
    tokenizer = load_tokenizer(out)
    ids = tokenizer("small left pleural effusion")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "small left pleural effusion"
    assert main(["text", "tokenizer", "--corpus", str(tmp_path / "none"), "--out", str(out)]) == 2


def test_prompts_prints_each_prompt_with_its_regions(tmp_path, capsys):
    assert main(["text", "prompts", REPORT]) == 0
    lines = capsys.readouterr().out.splitlines()
    effusion = next(line for line in lines if "pleural effusion: present" in line)
    assert effusion.split("\t") == [
        "small left pleural effusion: present",
        "[left costophrenic angle]",
        "typical",
    ]
    assert "pneumothorax: absent\t[right apical zone, left apical zone]\ttypical" in lines
    report_file = tmp_path / "report.txt"
    report_file.write_text("Right lower lobe pneumonia.")
    out = tmp_path / "prompts.json"
    assert main(["text", "prompts", "--file", str(report_file), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["prompts"] == [
        {
            "text": "right pneumonia in the right lower lung zone: present",
            "regions": ["right lower lung zone"],
            "position": "stated",
        }
    ]
    assert main(["text", "prompts", "--file", str(tmp_path / "absent.txt")]) == 2


def _openi_xml(uid: str, findings: str, impression: str) -> str:
    return (
        f'<eCitation><uId id="{uid}"/><MedlineCitation><Article><Abstract>'
        f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
        f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>'
        "</Abstract></Article></MedlineCitation></eCitation>"
    )


def test_prompts_summarises_an_openi_folder(tmp_path, capsys):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    reports = [
        ("Small left apical pneumothorax. No effusion.", "Left pneumothorax."),
        ("Heart size is normal.", "Normal chest."),
        ("", ""),
    ]
    for number, (findings, impression) in enumerate(reports, start=1):
        (folder / f"{number}.xml").write_text(_openi_xml(f"CXR{number}", findings, impression))
    out = tmp_path / "summary.json"
    assert main(["text", "prompts", "--open-i", str(tmp_path), "--json", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads(out.read_text())
    # Report 1: pneumothorax stated at the left apex (the impression restates it), effusion
    # absent; report 2: cardiomegaly absent; report 3 is empty.
    assert summary["reports"] == 3 and summary["reports_with_prompts"] == 2
    assert summary["prompts"] == 3
    assert summary["prompts_per_report"] == {"mean": 1.0, "median": 1, "max": 2}
    assert summary["by_existence"] == {"present": 1, "absent": 2, "uncertain": 0}
    assert summary["position"] == {"stated": 1, "typical": 2, "stated_share": 0.3333}
    assert summary["position_present"] == {"stated": 1, "typical": 0, "stated_share": 1.0}
    assert summary["top_entities"][0] == {
        "entity": "pneumothorax",
        "prompts": 1,
        "stated": 1,
        "typical": 0,
        "stated_share": 1.0,
    }
    assert main(["text", "prompts", "--open-i", str(tmp_path / "none")]) == 2
