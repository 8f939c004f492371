"""The ComfyUI side of the runtime's state: the prompt queue and its worker, history, files, websockets.

One worker thread executes prompts in queue order (lowest ``number`` first, as ComfyUI's heap does),
holding the runtime's generation lock so SD WebUI requests and ComfyUI prompts never run at once.
Messages go to the submitting client's websocket (``client_id``) with ComfyUI's names and fields:
``execution_start``, ``execution_cached``, ``executing``, ``progress``, ``executed``, then one of
``execution_success`` / ``execution_error`` / ``execution_interrupted``, then ``executing`` with
``node: null``; ``status`` (queue size) goes to everyone. Images live in memory (bounded), not on disk.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from sdlab.runtime import comfy_graph
from sdlab.runtime.comfy_nodes import NodeContext
from sdlab.runtime.loader import ModelRegistry

logger = logging.getLogger(__name__)
MAX_HISTORY = 1000
MAX_FILES = 512
FILE_TYPES = ("input", "output", "temp")


def safe_name(name: str) -> bool:
    """ComfyUI's rule for file names and subfolders in /view and /upload: no absolute paths, no '..'."""
    return not name.startswith("/") and ".." not in name and "\\" not in name


class FileStore:
    """Uploaded inputs and saved outputs, in memory, oldest dropped past ``max_files``."""

    def __init__(self, max_files: int = MAX_FILES) -> None:
        self._files: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._counters: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        self._max = max_files

    def put(self, kind: str, subfolder: str, filename: str, data: bytes) -> None:
        with self._lock:
            self._files[(kind, subfolder, filename)] = data
            self._files.move_to_end((kind, subfolder, filename))
            while len(self._files) > self._max:
                self._files.popitem(last=False)

    def get(self, kind: str, subfolder: str, filename: str) -> bytes | None:
        with self._lock:
            return self._files.get((kind, subfolder, filename))

    def names(self, kind: str) -> list[str]:
        """Files of one type as LoadImage names them: ``subfolder/filename`` or ``filename``."""
        with self._lock:
            return [f"{sub}/{name}" if sub else name for (k, sub, name) in self._files if k == kind]

    def read_input(self, name: str) -> bytes:
        subfolder, _, filename = name.rpartition("/")
        data = self.get("input", subfolder, filename)
        if data is None:
            raise FileNotFoundError(f"Invalid image file: {name}; upload it with POST /upload/image first")
        return data

    def save(self, png: bytes, filename_prefix: str, kind: str) -> dict[str, str]:
        """Store a PNG as ComfyUI's SaveImage names it: ``<prefix>_<counter:05>_.png``."""
        subfolder, _, base = filename_prefix.strip().rpartition("/")
        if not safe_name(filename_prefix) or not base:
            raise ValueError(f"filename_prefix {filename_prefix!r} must be a relative name without '..'")
        with self._lock:
            key = (kind, subfolder, base)
            self._counters[key] = counter = self._counters.get(key, 0) + 1
        filename = f"{base}_{counter:05}_.png"
        self.put(kind, subfolder, filename, png)
        return {"filename": filename, "subfolder": subfolder, "type": kind}


class Hub:
    """Websocket fan-out: messages from any thread, delivered in order by each socket's event loop."""

    def __init__(self) -> None:
        self._sockets: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()

    def connect(self, sid: str, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._sockets[sid] = (loop, queue)  # a reconnect with the same clientId replaces the old socket
        return queue

    def disconnect(self, sid: str, queue: asyncio.Queue) -> None:
        with self._lock:
            if sid in self._sockets and self._sockets[sid][1] is queue:
                del self._sockets[sid]

    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """To socket ``sid``, or to every socket when ``sid`` is None (ComfyUI's ``send_sync``)."""
        message = {"type": event, "data": data}
        with self._lock:
            targets = list(self._sockets.values()) if sid is None else [self._sockets[sid]] if sid in self._sockets else []
        for loop, queue in targets:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, message)
            except RuntimeError:  # the socket's loop has closed: the server is stopping
                logger.debug("dropped %s message for a closed loop", event)


class PromptQueue:
    """Queued prompts, the one running, and finished ones (history), with the worker that runs them."""

    def __init__(self, registry: ModelRegistry, generation_lock: Any, store: FileStore, hub: Hub) -> None:
        self.registry, self.generation_lock, self.store, self.hub = registry, generation_lock, store, hub
        self._cond = threading.Condition()
        self._pending: list[tuple[float, int, list[Any]]] = []
        self._seq = itertools.count()
        self._running: list[Any] | None = None
        self._values: dict[str, dict[str, dict[str, Any]]] = {}
        self._interrupt = threading.Event()
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.next_number = 0
        self._worker: threading.Thread | None = None

    # -- queue -------------------------------------------------------------------------------------
    def put(self, item: list[Any], values: dict[str, dict[str, Any]]) -> None:
        """Queue ``[number, prompt_id, prompt, extra_data, outputs_to_execute]`` (ComfyUI's item)."""
        with self._cond:
            self._values[item[1]] = values
            heapq.heappush(self._pending, (item[0], next(self._seq), item))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="comfy-prompts", daemon=True)
                self._worker.start()
            self._cond.notify()
        self._queue_updated()

    def info(self) -> dict[str, Any]:
        with self._cond:
            remaining = len(self._pending) + (self._running is not None)
        return {"exec_info": {"queue_remaining": remaining}}

    def current(self) -> tuple[list[Any], list[Any]]:
        """(running, pending) items, as ``GET /queue`` shows them."""
        with self._cond:
            running = [self._running] if self._running is not None else []
            return running, [item for _, _, item in sorted(self._pending)]

    def delete(self, prompt_ids: list[str]) -> None:
        with self._cond:
            self._pending = [p for p in self._pending if p[2][1] not in prompt_ids]
            heapq.heapify(self._pending)
            for prompt_id in prompt_ids:
                self._values.pop(prompt_id, None)
        self._queue_updated()

    def clear(self) -> None:
        with self._cond:
            self._pending = []
            self._values.clear()
        self._queue_updated()

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only if it is ``prompt_id``, when given)."""
        with self._cond:
            running = self._running
        if running is not None and prompt_id in (None, running[1]):
            self._interrupt.set()
            logger.info("interrupting prompt %s", running[1])

    def _queue_updated(self) -> None:
        self.hub.send("status", {"status": self.info()})

    # -- worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                _, _, item = heapq.heappop(self._pending)
                self._running = item
                values = self._values.pop(item[1], {})
                self._interrupt.clear()
            self._queue_updated()
            try:
                self._execute(item, values)
            except Exception as exc:  # the worker must survive anything a prompt does; clients still get an answer
                logger.exception("prompt %s: unexpected failure", item[1])
                error = {"prompt_id": item[1], "node_id": None, "node_type": None, "exception_message": str(exc),
                         "exception_type": type(exc).__name__, "timestamp": int(time.time() * 1000)}
                with self._cond:
                    self.history[item[1]] = {"prompt": item, "outputs": {}, "meta": {}, "status": {
                        "status_str": "error", "completed": False, "messages": [["execution_error", error]]}}
            finally:
                # as ComfyUI: out of the running list and into history before `executing` with node null
                with self._cond:
                    self._running = None
                self._queue_updated()
                self.hub.send("executing", {"node": None, "prompt_id": item[1]}, item[3].get("client_id"))

    def _execute(self, item: list[Any], values: dict[str, dict[str, Any]]) -> None:
        _, prompt_id, prompt, extra, outputs = item
        client_id = extra.get("client_id")
        messages: list[list[Any]] = []

        def add_message(event: str, data: dict[str, Any]) -> None:
            data = {**data, "timestamp": int(time.time() * 1000)}
            messages.append([event, data])
            if client_id is not None:
                self.hub.send(event, data, client_id)

        def on_node(node_id: str) -> None:
            self.hub.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, client_id)

        ui_outputs: dict[str, dict[str, Any]] = {}

        def on_ui(node_id: str, ui: dict[str, Any]) -> None:
            ui_outputs[node_id] = ui
            self.hub.send("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
                          client_id)

        ctx = NodeContext(
            registry=self.registry, prompt=prompt, read_input=self.store.read_input, save_image=self.store.save,
            progress=lambda value, total: self.hub.send(
                "progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": ctx.node_id}, client_id),
            interrupted=self._interrupt.is_set,
        )
        started = time.perf_counter()
        add_message("execution_start", {"prompt_id": prompt_id})
        add_message("execution_cached", {"nodes": [], "prompt_id": prompt_id})
        status = "error"
        try:
            with self.generation_lock:
                comfy_graph.execute(prompt, outputs, values, ctx, on_node, on_ui)
            add_message("execution_success", {"prompt_id": prompt_id})
            status = "success"
        except comfy_graph.NodeInterrupted as stop:
            add_message("execution_interrupted", {"prompt_id": prompt_id, "node_id": stop.node_id,
                                                  "node_type": stop.node_type, "executed": stop.executed})
        except comfy_graph.NodeFailed as failed:
            logger.error("prompt %s: node %s (%s) failed: %s", prompt_id, failed.node_id, failed.node_type, failed.exception)
            add_message("execution_error", {"prompt_id": prompt_id, **failed.details()})
        logger.info("prompt %s: %s, %d node(s) with output, %.2f s", prompt_id, status, len(ui_outputs),
                    time.perf_counter() - started)
        with self._cond:
            self.history[prompt_id] = {
                "prompt": item,
                "outputs": ui_outputs,
                "status": {"status_str": status, "completed": status == "success", "messages": messages},
                "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in ui_outputs},
            }
            while len(self.history) > MAX_HISTORY:
                self.history.popitem(last=False)
