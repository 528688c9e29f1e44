"""A labelling page in the browser, for both kinds of RLHF labels: two completions of a language model (or one to score
1-5), and two clips of an agent's behaviour side by side. One question at a time, answered with the terminal labeller's
keys (1 / 2 / t / s / q, or 1-5 / s / q) or buttons; served on 127.0.0.1 only.

    page = LabellingPage(port=8000, media_dir=folder_of_gifs)        # starts serving; prints nothing
    answer = page.label({"kind": "pair", "prompt": ..., "first": ..., "second": ..., "progress": "pair 3 of 50"},
                        save=lambda answer: append_and_fsync(row_for(answer)))
    page.finish("50 labels saved")                                   # the page says so; the server stops

`save(answer)` runs in the request that carries the answer, before the browser is told it was taken: an answer the page
showed as saved is on disk, whatever happens to the process next. Built on FastAPI and uvicorn (the optional `web`
extra): the ML ecosystem's common server (vLLM's, TGI's and Gradio's own), a few hundred kilobytes, and it leaves the
page, its keys and its layout to one HTML file (labelling_page.html) rather than to a UI framework's widgets.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from classic_rl.infra.errors import ConfigError

PAGE = Path(__file__).with_name("labelling_page.html")
PAIR_KEYS = {"1": "1", "2": "2", "t": "tie", "s": "skip", "q": "quit"}
SCORE_KEYS = {**{str(s): s for s in range(1, 6)}, "s": "skip", "q": "quit"}
KINDS = {"pair": PAIR_KEYS, "clips": PAIR_KEYS, "score": SCORE_KEYS}


def require_free_port(port: int) -> None:
    """A ConfigError unless 127.0.0.1:port can be served (0: any free port)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0-65535 (0: any free port), got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise ConfigError(f"--port {port}: 127.0.0.1:{port} cannot be served ({err.strerror}); accepted: a free port, "
                              "or 0 for any") from None


class LabellingPage:
    """The page's server, in a thread of this process, and the one question it is showing."""

    def __init__(self, port: int, media_dir: str | Path | None = None, title: str = "rlhf-toy labelling"):
        try:
            import uvicorn
        except ImportError:
            raise ConfigError("the labelling page needs the web extra: pip install -e '.[web]' (FastAPI and uvicorn)") from None
        require_free_port(port)
        self.title, self.media_dir = title, Path(media_dir) if media_dir else None
        self._changed = threading.Condition()
        self._question: dict[str, Any] | None = None
        self._save: Callable[[Any], None] | None = None
        self._answer: Any = None
        self._finished: str | None = None
        self._asked = 0
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="labelling-page")
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise ConfigError(f"--port {port}: the labelling page could not start on 127.0.0.1:{port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"

    def label(self, question: dict[str, Any], save: Callable[[Any], None]) -> Any:
        """Show `question` ({"kind": pair | score | clips, and what the page shows}) until the browser answers; save(answer)
        runs before the answer is acknowledged (not for "quit"). Returns the answer: "1", "2", "tie", "skip", "quit", or a
        score 1-5. (The terminal labeller, rlhf_toy.rewards.labelling.Terminal, has the same method.)"""
        with self._changed:
            self._asked += 1
            self._question = {**question, "id": self._asked, "keys": KINDS[question["kind"]]}
            self._save, self._answer = save, None
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._answer is not None)
            answer, self._question = self._answer, None
            return answer

    def finish(self, message: str, linger_s: float = 1.0) -> None:
        """Tell the page labelling is over (it shows `message`), give it linger_s to hear it, and stop serving."""
        with self._changed:
            self._finished, self._question = message, None
        time.sleep(linger_s)
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def current(self) -> dict[str, Any]:
        """What GET /api/question answers: the question shown, or that there is none yet, or that labelling is over."""
        with self._changed:
            if self._finished is not None:
                return {"status": "finished", "message": self._finished, "title": self.title}
            if self._question is None:
                return {"status": "waiting", "title": self.title}
            return {"status": "question", "question": self._question, "title": self.title}

    def answer(self, question_id: int, answer: Any) -> dict[str, Any]:
        """Take the browser's answer to question `question_id`: saved, then handed to ask(). A ValueError names what was
        wrong (a question no longer shown, an answer its kind does not accept)."""
        with self._changed:
            if self._question is None or self._question["id"] != question_id:
                raise ValueError(f"question {question_id} is no longer shown; reload the page")
            if answer not in self._question["keys"].values():
                accepted = ", ".join(str(v) for v in self._question["keys"].values())
                raise ValueError(f"{answer!r} is not an answer to this question; accepted: {accepted}")
            if answer != "quit":
                self._save(answer)
            self._answer = answer
            self._changed.notify_all()
            return {"saved": answer != "quit", "id": question_id, "answer": answer}

    def _app(self):
        from fastapi import Body, FastAPI, HTTPException
        from fastapi.responses import FileResponse, HTMLResponse

        app = FastAPI(title=self.title, docs_url=None, redoc_url=None, openapi_url=None)

        @app.get("/", response_class=HTMLResponse)
        def page() -> str:
            return PAGE.read_text()

        @app.get("/api/question")
        def question() -> dict[str, Any]:
            return self.current()

        @app.post("/api/answer")
        def answer(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's way to read a JSON body)
            try:
                return self.answer(body.get("id"), body.get("answer"))
            except ValueError as err:
                raise HTTPException(status_code=409, detail=str(err)) from None

        @app.get("/media/{name}")
        def media(name: str) -> FileResponse:
            path = (self.media_dir / name) if self.media_dir else None
            if path is None or path.parent != self.media_dir or not path.is_file():
                raise HTTPException(status_code=404, detail=f"no clip {name}")
            return FileResponse(path)

        return app
