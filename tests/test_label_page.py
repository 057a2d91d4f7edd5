"""The label folder's store and the labelling web app (through Starlette's test client; the real browser
is in test_label_browser.py)."""

from __future__ import annotations

import json

import pytest

from diffusion_align.label_store import (
    LabelFile,
    export_reference,
    import_reference,
    kappa,
    pair_votes,
    scores_for,
    summary,
    synthetic_folder,
)
from mmreward.config_file import ConfigError


@pytest.fixture
def folder(tmp_path):
    return synthetic_folder(tmp_path / "labels", n_groups=5, k=3)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_scores_for_best_rank_tie_broken():
    assert scores_for(4, best=2) == [0, 0, 1, 0]
    assert scores_for(4) == [0, 0, 0, 0]  # a tie
    assert scores_for(4, best=0, broken=[3]) == [1, 0, 0, -1]
    assert scores_for(4, ranking=[2, 0, 3], broken=[1]) == [2, -1, 3, 1]
    with pytest.raises(ConfigError, match="broken"):
        scores_for(3, best=1, broken=[1])
    with pytest.raises(ConfigError, match="rank every image"):
        scores_for(3, ranking=[0, 1])
    with pytest.raises(ConfigError, match="outside 0..2"):
        scores_for(3, best=3)


def test_group_labels_imply_pair_votes_and_the_last_label_wins(folder):
    f = LabelFile(folder, "alice", [3] * 5)
    f.set(0, scores_for(3, best=1))  # pairs of group 0: (0,1) (0,2) (1,2)
    f.set(1, scores_for(3, ranking=[2, 0, 1]))
    f.set(0, scores_for(3, best=2))  # a changed mind replaces the label, it does not vote twice
    assert lines(folder / "labels_alice.jsonl") == [{"group": 1, "scores": [2, 1, 3]}, {"group": 0, "scores": [0, 0, 1]}]
    votes = pair_votes(folder)["labels_alice.jsonl"]
    assert votes == {0: None, 1: 1, 2: 1, 3: 0, 4: 1, 5: 1}
    # a reload reads the same state, in the order of labelling; undo takes back the latest
    g = LabelFile(folder, "alice", [3] * 5)
    assert list(g.groups) == [1, 0] and g.undo() == 0 and list(g.groups) == [1]
    assert lines(folder / "labels_alice.jsonl") == [{"group": 1, "scores": [2, 1, 3]}]
    assert g.undo() == 1 and g.undo() is None
    # terminal pair lines: the last line of a pair counts
    (folder / "labels_bob.jsonl").write_text('{"pair": 0, "chosen": 0}\n{"pair": 0, "chosen": 1}\n{"pair": 1, "chosen": null}\n')
    assert pair_votes(folder)["labels_bob.jsonl"] == {0: 1, 1: None}


def test_bad_label_files_name_the_line(folder):
    (folder / "labels_x.jsonl").write_text('{"group": 0, "scores": [1, 0, 0]}\n{"group": 9, "scores": [1, 0, 0]}\n')
    with pytest.raises(ConfigError, match=r"labels_x.jsonl, line 2: group 9"):
        pair_votes(folder)
    (folder / "labels_x.jsonl").write_text('{"group": 0, "scores": [1, 0]}\n')
    with pytest.raises(ConfigError, match="line 1"):
        LabelFile(folder, "x", [3] * 5)
    with pytest.raises(ConfigError, match="annotator"):
        LabelFile(folder, "../etc", [3] * 5)


def test_summary_counts_and_agreement(folder):
    a, b = LabelFile(folder, "a", [3] * 5), LabelFile(folder, "b", [3] * 5)
    a.set(0, scores_for(3, best=0))
    a.set(1, scores_for(3, best=0))
    b.set(1, scores_for(3, best=1))  # group 1: pairs 3 (0,1), 4 (0,2), 5 (1,2)
    s = summary(folder)
    assert s["annotators"]["a"] == {"pairs": 6, "preferences": 4, "ties": 2, "groups": 2}
    assert s["annotators"]["b"]["groups"] == 1
    (ag,) = s["agreement"]
    # a: (0, 0, None), b: (1, None, 0) on pairs 3, 4, 5: no verdict agrees
    assert ag["annotators"] == ["a", "b"] and ag["shared_pairs"] == 3 and ag["agreement"] == 0.0
    assert kappa([0, 1, None, 0], [0, 1, None, 0]) == 1.0 and kappa([0, 0], [0, 0]) is None


def test_reference_json_round_trip(folder):
    f = LabelFile(folder, "alice", [3] * 5)
    f.set(0, [0, -1, 1])
    f.set(1, [0, 0, 0])
    f.set(3, [1, 0, 0])  # group 2 unlabelled: the reference truncates to the shortest list, so 3 is left out
    assert export_reference(folder, "alice") == [[0, -1, 1], [0, 0, 0]]
    assert import_reference(folder, "ref", [[0, -1, 1], [0.5, 0.5, 0]]) == 2
    assert pair_votes(folder)["labels_ref.jsonl"] == {0: 0, 1: 1, 2: 1, 3: None, 4: 0, 5: 0}
    with pytest.raises(ConfigError, match="exists"):
        import_reference(folder, "ref", [])
    with pytest.raises(ConfigError, match="item 0"):
        import_reference(folder, "other", [[1, 0]])


@pytest.fixture
def client(folder):
    from starlette.testclient import TestClient

    from diffusion_align.label_server import create_app

    return TestClient(create_app(folder), raise_server_exceptions=False)


def test_api_labels_each_group_and_continues(client, folder):
    r = client.get("/api/group/0?annotator=alice")
    assert r.status_code == 200
    g = r.json()
    assert g["prompt"] == "synthetic group 0" and g["images"] == ["/images/00000.png", "/images/00001.png", "/images/00002.png"]
    assert (g["total"], g["labelled"], g["first"], g["next"], g["scores"]) == (5, 0, 0, 1, None)
    assert client.get(g["images"][1]).content == (folder / "images/00001.png").read_bytes()
    r = client.post("/api/label", json={"annotator": "alice", "group": 0, "best": 2, "broken": [0]})
    assert r.json()["scores"] == [-1, 0, 1] and r.json()["next"] == 1 and r.json()["labelled"] == 1
    assert lines(folder / "labels_alice.jsonl") == [{"group": 0, "scores": [-1, 0, 1]}]
    client.post("/api/label", json={"annotator": "alice", "group": 1, "ranking": [1, 2, 0]})
    client.post("/api/label", json={"annotator": "bob", "group": 1})  # a tie, in bob's own file
    assert client.post("/api/undo", json={"annotator": "alice"}).json()["group"] == 1
    assert lines(folder / "labels_alice.jsonl") == [{"group": 0, "scores": [-1, 0, 1]}]
    assert lines(folder / "labels_bob.jsonl") == [{"group": 1, "scores": [0, 0, 0]}]
    assert client.get("/api/summary").json()["annotators"]["alice"]["groups"] == 1
    assert "bob" in client.get("/summary").text
    # a restarted server reads the files back
    from starlette.testclient import TestClient

    from diffusion_align.label_server import create_app

    again = TestClient(create_app(folder)).get("/api/group/0?annotator=alice").json()
    assert again["scores"] == [-1, 0, 1] and again["labelled"] == 1


@pytest.mark.parametrize("method, url, payload, status, message", [
    ("get", "/images/..%2F..%2Fgroups.jsonl", None, 404, None),
    ("get", "/images/00099.png", None, 404, "no such image"),
    ("get", "/api/group/99?annotator=a", None, 404, "no group 99"),
    ("get", "/api/group/x?annotator=a", None, 400, "number"),
    ("get", "/api/group/0?annotator=../../x", None, 400, "annotator"),
    ("post", "/api/label", b"{not json", 400, "not JSON"),
    ("post", "/api/label", b"[1, 2]", 400, "JSON object"),
    ("post", "/api/label", {"annotator": "a", "group": 0, "best": 7}, 400, "outside"),
    ("post", "/api/label", {"annotator": "a", "group": "0"}, 400, "no group"),
    ("post", "/api/label", {"annotator": "a", "group": 0, "broken": 1}, 400, "lists"),
])
def test_bad_requests_get_a_clear_4xx(client, folder, method, url, payload, status, message):
    if method == "get":
        r = client.get(url)
    elif isinstance(payload, bytes):
        r = client.post(url, content=payload, headers={"Content-Type": "application/json"})
    else:
        r = client.post(url, json=payload)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json") and "Traceback" not in r.text
    if message:
        assert message in r.json()["error"]
    assert not (folder / "labels_a.jsonl").exists()  # nothing written by a refused request


def test_token_is_required_when_set(folder):
    from starlette.testclient import TestClient

    from diffusion_align.label_server import create_app

    c = TestClient(create_app(folder, token="s3cret"))
    assert c.get("/").status_code == 403
    assert c.get("/api/group/0?annotator=a&token=wrong").status_code == 403
    assert c.get("/?token=s3cret").status_code == 200  # sets the cookie for the page's own requests
    assert c.get("/api/group/0?annotator=a").status_code == 200
    assert TestClient(create_app(folder, token="s3cret")).get("/images/00000.png",
                                                              headers={"X-Label-Token": "s3cret"}).status_code == 200


def test_serve_makes_a_token_off_loopback(monkeypatch, folder, capsys):
    import uvicorn

    from diffusion_align.label_server import serve

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: seen.update(host=host, app=app))
    serve(folder, "0.0.0.0", 9999)
    printed = capsys.readouterr().out
    assert "http://0.0.0.0:9999/?token=" in printed and seen["host"] == "0.0.0.0"
    serve(folder)
    assert "?token=" not in capsys.readouterr().out


def test_cli_export_import_and_bad_folder(folder, tmp_path, capsys):
    from diffusion_align.label import main

    LabelFile(folder, "alice", [3] * 5).set(0, [1, 0, 0])
    out = tmp_path / "alice.json"
    assert main(["export", "--dir", str(folder), "--annotator", "alice", "--out", str(out)]) == 1
    assert json.loads(out.read_text()) == [[1, 0, 0]]
    with pytest.raises(SystemExit, match="exists"):
        main(["export", "--dir", str(folder), "--annotator", "alice", "--out", str(out)])
    (tmp_path / "bad.json").write_text("[[1, 0,")
    with pytest.raises(SystemExit, match="bad.json, line 1: not valid JSON"):
        main(["import", "--dir", str(folder), "--annotator", "bob", str(tmp_path / "bad.json")])
    assert main(["import", "--dir", str(folder), "--annotator", "bob", str(out)]) == 1
    with pytest.raises(SystemExit, match="pairs file not found"):
        main(["summary", "--dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no groups.jsonl"):
        main(["serve", "--dir", str(tmp_path)])
