"""The OpenAI-compatible judge talks to a local HTTP server and turns its verdicts into scores."""

from __future__ import annotations

import json
import threading
import typing
from http.server import BaseHTTPRequestHandler, HTTPServer

from prolong.eval.judge import OpenAIJudge


class _Handler(BaseHTTPRequestHandler):
    requests: typing.ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][0]["content"]
        if "fluency" in prompt:
            reply = 'Sure. {"fluency": 1, "correctness": 2}'
        elif "key points" in prompt:
            reply = '{"supported": [true, false]}'
        else:
            reply = '{"supported": [true, true, false, true]}'
        data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_judge_scores_through_endpoint() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = OpenAIJudge(f"http://127.0.0.1:{server.server_port}/v1", "local-judge", api_key="k")
        qa = judge.score_qa("Who?", ["Anna"], "Anna did.")
        assert qa == {"judge_fluency": 1.0, "judge_correctness": 2 / 3, "judge_score": 2 / 3}
        summary = judge.score_summary("ref", ["point a", "point b"], "One. Two. Three. Four.")
        # recall 1/2, precision 3/4 -> F1 = 2 * 0.5 * 0.75 / 1.25 = 0.6
        assert summary["judge_recall"] == 0.5 and summary["judge_precision"] == 0.75
        assert abs(summary["judge_f1"] - 0.6) < 1e-9
        first = _Handler.requests[0]
        assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k"
        assert first["body"]["model"] == "local-judge" and first["body"]["temperature"] == 0.0
    finally:
        server.shutdown()
