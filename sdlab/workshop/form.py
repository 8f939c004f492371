"""The generate form: prompt, negative prompt, runtime, size, steps, seed, batch → tasks → live status → images.

`GenerateRequest` holds what the form holds and checks it (a mistake names the field and the fix); `GenerateForm`
is the ipywidgets form whose Generate button calls `run`. Under papermill the notebook calls `run` once with its
parameters, so the tests run exactly what the button runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdlab.contracts import Notification
from sdlab.demo import request_for
from sdlab.errors import SdlabError
from sdlab.workshop.session import Session


class FormError(SdlabError):
    """A value in the generate form that the API would refuse."""


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    runtime: str
    negative_prompt: str = ""
    size: int = 128
    steps: int = 12
    seed: int = 0
    batch: int = 1

    def check(self, session: Session) -> GenerateRequest:
        """This request, or a FormError naming the field and what to put there."""
        if not self.prompt.strip():
            raise FormError("prompt is empty; describe the image, e.g. 'two small red circles on a blue background'")
        if self.runtime not in session.runtimes:
            raise FormError(f"runtime {self.runtime!r} is not in this stack; pick one of {sorted(session.runtimes)}")
        if self.size % 8 or not 64 <= self.size <= 1024:
            raise FormError(f"size {self.size} must be a multiple of 8 between 64 and 1024, e.g. 128")
        if not 1 <= self.steps <= 150:
            raise FormError(f"steps {self.steps} must be between 1 and 150; 10-20 is plenty for the small model")
        if not 1 <= self.batch <= 4:
            raise FormError(f"batch {self.batch} must be between 1 and 4 images")
        return self

    def submit_kwargs(self, runtime_spec: dict[str, Any], index: int = 0) -> dict[str, Any]:
        """`Client.submit` arguments for the `index`-th task of this request (one task per image; seeds count up)."""
        kwargs = request_for(runtime_spec["type"], runtime_spec.get("model"), self.prompt, seed=self.seed + index,
                             size=self.size, steps=self.steps)
        payload = kwargs["payload"].get("params", kwargs["payload"])
        if self.negative_prompt:
            payload["negative_prompt"] = self.negative_prompt
        return kwargs


@dataclass
class Generated:
    request: GenerateRequest
    task_ids: list[str]
    notes: dict[str, Notification] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)
    transitions: dict[str, list[str]] = field(default_factory=dict)


def generate(session: Session, request: GenerateRequest, *, timeout: float = 300.0, bars: bool = True,
             on_done: Any = None) -> Generated:
    """Submit the request's tasks, follow them with a bar each, fetch their images. `on_done(note, images)` is called
    as each task's notification arrives (the form shows its images then)."""
    from sdlab.workshop.progress import TaskBars

    request.check(session)
    spec = session.runtimes[request.runtime]
    submitted = [session.client.submit(request.runtime, **request.submit_kwargs(spec, i)) for i in range(request.batch)]
    result = Generated(request, [s.id for s in submitted])
    task_bars = TaskBars(session.client, result.task_ids, enabled=bars)
    shown: set[str] = set()

    def progress(done: dict[str, Notification]) -> None:
        task_bars(done)
        for task_id, note in done.items():
            if task_id not in shown:
                shown.add(task_id)
                images = session.client.images(note)
                result.images += images
                if on_done is not None:
                    on_done(note, images)

    try:
        result.notes = session.client.wait(result.task_ids, timeout=timeout, progress=progress)
    finally:
        task_bars.close()
    result.transitions = task_bars.transitions
    return result


class GenerateForm:
    """The form as ipywidgets; display it (it is the last value of a cell) and press Generate."""

    def __init__(self, session: Session, defaults: GenerateRequest) -> None:
        import ipywidgets as w

        self.session = session
        self.prompt = w.Textarea(value=defaults.prompt, description="prompt", layout=w.Layout(width="95%"))
        self.negative = w.Text(value=defaults.negative_prompt, description="negative")
        self.runtime = w.Dropdown(options=sorted(session.runtimes), value=defaults.runtime, description="runtime")
        self.size = w.Dropdown(options=[64, 128, 256, 512], value=defaults.size, description="size")
        self.steps = w.IntSlider(value=defaults.steps, min=1, max=50, description="steps")
        self.seed = w.IntText(value=defaults.seed, description="seed")
        self.batch = w.IntSlider(value=defaults.batch, min=1, max=4, description="batch")
        self.button = w.Button(description="Generate", button_style="primary", icon="play")
        self.status = w.HTML()
        self.output = w.Output()
        self.results: list[Generated] = []
        self.button.on_click(lambda _: self.run(self.request()))
        self.widget = w.VBox([self.prompt, self.negative, w.HBox([self.runtime, self.size]), w.HBox([self.steps, self.batch]),
                              self.seed, self.button, self.status, self.output])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def request(self) -> GenerateRequest:
        return GenerateRequest(prompt=self.prompt.value, runtime=self.runtime.value, negative_prompt=self.negative.value,
                               size=int(self.size.value), steps=int(self.steps.value), seed=int(self.seed.value),
                               batch=int(self.batch.value))

    def run(self, request: GenerateRequest, *, timeout: float = 300.0) -> Generated:
        """What Generate does: submit, show each task's status, show each task's images as they arrive."""
        from sdlab.workshop.gallery import show

        self.button.disabled = True
        self.status.value = "submitting…"

        def on_done(note: Notification, images: list[Any]) -> None:
            with self.output:
                show(images, [f"{note.runtime} {note.id[:8]} {note.timings.run_s or 0:.1f}s"], tile_px=request.size)
            self.status.value = f"{note.id[:8]}: {note.status.value}"

        try:
            with self.output:
                result = generate(self.session, request, timeout=timeout, on_done=on_done)
            self.results.append(result)
            self.status.value = f"{len(result.images)} image(s) from {request.runtime}"
            return result
        except SdlabError as err:
            self.status.value = f"<span style='color:#c00'>{err}</span>"
            raise
        finally:
            self.button.disabled = False
            self.seed.value = int(self.seed.value) + request.batch  # the next press gives new images


__all__ = ["FormError", "GenerateForm", "GenerateRequest", "Generated", "generate"]
