"""A scripted OpenAI-compatible model for the real node: the demo's and the e2e tests' model.

    python3 e2e/model_server.py ADDRESS PORT LOG

No model hub is reachable here, so the "model" follows a script (chat completions only):

- when the last message carries a code run's output ("Output of the code ..."), it answers
  "The code printed:" and that output;
- when the task itself holds a ```python block, it answers with that block (a model that does
  what a task asks: how the tests make a tenant's sandbox run an attacker's code);
- otherwise it answers with a short program that computes 7 * (1 + ... + 100).

Each request is appended to LOG as one JSON line (the Authorization header and the messages),
so a test can check which key reached it. It runs in the real node's `tenantry-outside`
namespace, on a documentation address a tenant's egress lists: the model provider as the
cluster sees one, outside it. Only the standard library is used.
"""

from __future__ import annotations

import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_CODE = "print('sum:', sum(range(101)) * 7)\n"
FENCED = re.compile(r"```python\n(.*?)```", re.DOTALL)


def answer(messages: list[dict[str, Any]]) -> str:
    last = str(messages[-1].get("content", "")) if messages else ""
    if last.startswith("Output of the code"):
        return "The code printed:\n" + last.split("\n", 1)[-1]
    asked = FENCED.search(last)
    code = asked.group(1) if asked else DEFAULT_CODE
    return f"Let me run that.\n```python\n{code}```\n"


def completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


class Handler(BaseHTTPRequestHandler):
    log_path: Path

    def do_POST(self) -> None:  # the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        record = {"authorization": self.headers.get("Authorization"), **body}
        with self.log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        reply = json.dumps(completion(body.get("model", ""), answer(body["messages"]))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
        pass


def main() -> None:
    address, port, log = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    Handler.log_path = log
    server = ThreadingHTTPServer((address, port), Handler)
    print(f"scripted model on http://{address}:{port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
