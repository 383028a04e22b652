"""A node's own record of what it sent (`workers.audit`, ``fedalign node audit``), compared with what a
recording proxy saw on the wire; a record that was altered, or a body that was not parameters or declared
metrics, fails the verification."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
from api_support import ADMIN_TOKEN, tiny_settings
from process_support import RecordingProxy
from typer.testing import CliRunner

from cli.main import app
from messaging import multipart
from workers import audit
from workers.audit import AUDIT_FILE, AuditLog
from workers.client import NodeClient, run_node

ROLES = {"alpha": "source", "beta": "source", "omega": "target"}


def run_audited(
    live_server: str, specs: dict[str, str], tmp_path: Path
) -> tuple[RecordingProxy, dict[str, str]]:
    """A federation whose nodes send through a recording proxy, each writing its own audit log."""
    admin = httpx.Client(base_url=live_server, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    fid = admin.post("/api/v1/federations", json=tiny_settings()).json()["id"]
    tokens = {
        name: admin.post(
            f"/api/v1/federations/{fid}/nodes", json={"name": name, "role": role, "dataset": specs[name]}
        ).json()["token"]
        for name, role in ROLES.items()
    }
    assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
    failures: list[BaseException] = []
    with RecordingProxy(live_server) as proxy:

        def node(name: str) -> None:
            try:
                log = AuditLog(tmp_path / name / AUDIT_FILE)
                with NodeClient(proxy.url, tokens[name], audit=log) as client:
                    run_node(client, poll_interval_s=0.02)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=node, args=(name,)) for name in ROLES]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not failures, failures
    assert admin.get(f"/api/v1/federations/{fid}").json()["status"] == "finished"
    admin.close()
    return proxy, tokens


def test_the_audit_log_holds_exactly_what_the_wire_carried(
    live_server: str, vector_specs: Callable[[], dict[str, str]], tmp_path: Path
) -> None:
    proxy, tokens = run_audited(live_server, vector_specs(), tmp_path)
    for name, token in tokens.items():
        wire = [
            (r.method, r.path, len(r.body), hashlib.sha256(r.body).hexdigest())
            for r in proxy.records
            if r.headers.get("Authorization") == f"Bearer {token}"
        ]
        entries = audit.read(tmp_path / name / AUDIT_FILE)
        logged = [
            (e["method"], httpx.URL(e["url"]).raw_path.decode(), e["bytes"], e["sha256"]) for e in entries
        ]
        assert logged == wire, name
        assert all(e["status"] < 400 for e in entries)
        # The hot path: polls (no body) and combined submissions, whose parts the log splits as the server
        # does, each part's size and hash those of the bytes the proxy saw.
        assert {e["body"]["kind"] for e in entries} == {"none", "multipart"}, name
        bodies = {r.path: r for r in proxy.records if r.headers.get("Authorization") == f"Bearer {token}"}
        submissions = [e for e in entries if e["body"]["kind"] == "multipart"]
        for entry in submissions:
            sent = bodies[httpx.URL(entry["url"]).raw_path.decode()]
            on_wire = [
                (part.name, len(data), hashlib.sha256(data).hexdigest())
                for part, data in multipart.parts(sent.body, httpx.Headers(sent.headers)["content-type"])
            ]
            assert [(p["name"], p["bytes"], p["sha256"]) for p in entry["body"]["parts"]] == on_wire
        parts = [p["body"] for e in submissions for p in e["body"]["parts"]]
        assert {p["kind"] for p in parts} == {"json", "safetensors"}, name  # completions, uploads
        sent_metrics = {m for p in parts for m in p.get("metrics", {})}
        assert "disc_acc_own" in sent_metrics
        assert all(p["tensors"] for p in parts if p["kind"] == "safetensors")
        raw = (tmp_path / name / AUDIT_FILE).read_text()
        assert token not in raw  # headers are never written
        assert audit.verify(tmp_path / name / AUDIT_FILE).ok
        assert (tmp_path / name / AUDIT_FILE).stat().st_mode & 0o777 == 0o600


def test_the_command_verifies_the_record_and_finds_an_altered_line(
    live_server: str, vector_specs: Callable[[], dict[str, str]], tmp_path: Path
) -> None:
    run_audited(live_server, vector_specs(), tmp_path)
    data_dir = tmp_path / "alpha"
    runner = CliRunner(env={"COLUMNS": "250"})
    shown = runner.invoke(app, ["node", "audit", "--data-dir", str(data_dir)])
    assert shown.exit_code == 0, shown.output
    assert "verified: the record is intact" in shown.output and "parameters:" in shown.output
    as_json = json.loads(runner.invoke(app, ["node", "audit", "--data-dir", str(data_dir), "--json"]).output)
    assert as_json["ok"] and as_json["entries"] and as_json["chain_broken_at"] is None

    # An upload's line edited to hide what it sent: the chain breaks at the next line.
    path = data_dir / AUDIT_FILE
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if '"safetensors"' in line)
    edited = json.loads(lines[index])
    edited["body"] = {"kind": "none"}
    lines[index] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    altered = runner.invoke(app, ["node", "audit", "--data-dir", str(data_dir), "--verify"])
    assert altered.exit_code == 1
    assert f"the chain breaks at line {index + 2}" in altered.output


def test_a_body_other_than_parameters_or_declared_metrics_is_named(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / AUDIT_FILE)
    log.append({"method": "POST", "url": "http://x/a", "bytes": 2, "sha256": "0", "body": {"kind": "none"}})
    log.append(
        {
            "method": "POST",
            "url": "http://x/b",
            "bytes": 9,
            "sha256": "0",
            "body": {"kind": "json", "fields": ["metrics"], "metrics": {"raw_rows": 1.0}},
        }
    )
    log.append(
        {
            "method": "PUT",
            "url": "http://x/c",
            "bytes": 9,
            "sha256": "0",
            "body": {"kind": "other", "content_type": "text/csv"},
        }
    )
    checked = audit.verify(tmp_path / AUDIT_FILE)
    assert checked.chain_broken_at is None and checked.entries == 3
    assert checked.undeclared == [
        "line 2: POST http://x/b: metrics ['raw_rows']",
        "line 3: PUT http://x/c: a body of kind 'other'",
    ]
