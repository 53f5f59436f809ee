"""The explorer's web page: Gradio components wired to an :class:`~models.explore.Explorer`.

Every callback catches what goes wrong and shows it in the page's message box (``#explorer-message``)
instead of a traceback, leaving the rest of the page as it was.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from models.explore import (
    Answer,
    Explorer,
    Query,
    _do_label,
    _scalar,
    card_markdown,
    difference_view,
    how_changed,
    report_figures,
    slider_step,
    to_view,
)

log = logging.getLogger(__name__)


def _gradio():
    # Before the import: Gradio reads it once. The page never calls home (no analytics, no
    # version check); its default theme's fonts are served from the package itself.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as error:
        raise ImportError(
            "the explorer needs Gradio: pip install -e '.[explore]' (included in '.[dev]')"
        ) from error
    return gradio


def _attributes_markdown(
    rows: dict[str, dict[str, float | None]], how: dict[str, str] | None = None
) -> str:
    """A small table: a row per attribute (marked ``do`` or ``recomputed`` when the intervention
    changed it), a column per source (intended, or factual, then each judge)."""
    sources = list(rows)
    names = list(rows[sources[0]]) if sources else []
    if not names:
        return ""
    lines = ["| | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for name in names:
        label = name if not how or how.get(name) == "kept" else f"{name} ({how[name]})"
        cells = []
        for source in sources:
            value = rows[source].get(name)
            cells.append("-" if value is None else f"{value:.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fill(names: list[str], values: dict[str, float]) -> dict[str, float | None]:
    return {name: values.get(name) for name in names}


class Callbacks:
    """What the page's events run, as plain methods: each returns the page's message first, then
    its other outputs; on a bad input the message says what was wrong and the other outputs are
    ``skip`` (the page keeps them as they were).

    Args:
        explorer: the models and data.
        skip: the value that leaves an output unchanged (``gradio.skip()`` on the page).
        exports: where exported panels and tables are written.
    """

    def __init__(self, explorer: Explorer, skip: Any = None, exports: str | Path | None = None):
        self.explorer = explorer
        self.skip = skip
        self.names = list(explorer.graph.names)
        self.exports = Path(exports or tempfile.mkdtemp(prefix="cfzoo-explore-"))

    # how many outputs each kind of event has, after the message
    @property
    def view_size(self) -> int:
        return 5 + 3 * len(self.explorer.models) + 1  # answer state .. texts

    @property
    def start_size(self) -> int:
        return 1 + len(self.names) + self.view_size  # the query, the controls, the view

    def _guard(self, count: int, fn, *args) -> list[Any]:
        try:
            return ["", *fn(*args)]
        except (ValueError, FileNotFoundError, NotImplementedError) as error:
            return [f"**Error:** {error}", *[self.skip] * count]
        except Exception as error:  # a bug: say so on the page, keep the trace in the log
            log.exception("explorer callback %s failed", fn.__name__)
            return [
                f"**Unexpected error** ({type(error).__name__}: {error}); the details are in "
                "the terminal that started the page.",
                *[self.skip] * count,
            ]

    # -- what the page shows ----------------------------------------------------------------------
    def view(self, answer: Answer) -> list[Any]:
        """The answer state, the do label, the factual and true images with their attributes,
        then every model's counterfactual, difference map and attributes."""
        explorer, names = self.explorer, self.names
        how = how_changed(explorer.graph, answer.do)

        def judged(measured: dict) -> dict:
            return {j: _fill(names, measured.get(j, {})) for j in explorer.judge_names}

        factual = {"factual": {n: _scalar(answer.query.pa[n]) for n in names}}
        factual.update(judged(answer.factual_measured))
        if answer.truth is not None:
            truth = {
                "intended": _fill(names, answer.truth_parents),
                **judged(answer.truth_measured),
            }
            truth_out = [to_view(answer.truth), _attributes_markdown(truth, how)]
        else:
            truth_out = [None, f"*No true counterfactual: {answer.truth_note}*"]
        images, diffs, texts = [], [], []
        for a in answer.answers:
            cf = a.counterfactual
            rows = {"intended": {n: _scalar(cf.parents[n]) for n in names}, **judged(a.measured)}
            images.append(to_view(cf.image))
            diffs.append(difference_view(cf.image, cf.factual_image))
            truth_l1 = "" if a.truth_l1 is None else f", L1 to the truth {a.truth_l1:.2f} (0-255)"
            texts.append(
                _attributes_markdown(rows, how) + f"\n\n{a.seconds * 1000:.0f} ms{truth_l1}"
            )
        return [
            answer,
            f"**{answer.query.label}**: {_do_label(answer.do)}",
            to_view(answer.query.x),
            _attributes_markdown(factual),
            *truth_out,
            *images,
            *diffs,
            *texts,
        ]

    def _start(self, query: Query, residual: bool) -> list[Any]:
        graph = self.explorer.graph
        factual = [
            _scalar(query.pa[n]) if graph[n].is_continuous else int(_scalar(query.pa[n]))
            for n in self.names
        ]
        answer = self.explorer.answer(query, dict(zip(self.names, factual)), residual)
        return [query, *factual, *self.view(answer)]

    @staticmethod
    def _need(value: Any, what: str) -> Any:
        if value is None:
            raise ValueError(what)
        return value

    # -- the events -----------------------------------------------------------------------------
    def pick_test(self, position: float, residual: bool) -> list[Any]:
        """A test image chosen: the controls go to its attributes, the null intervention shows."""
        return self._guard(
            self.start_size, lambda: self._start(self.explorer.test_query(int(position)), residual)
        )

    def pick_upload(self, file: str | None, residual: bool, *attributes: Any) -> list[Any]:
        """``Use this image``: the uploaded file with the attributes entered for it."""

        def run():
            path = self._need(file, "no image uploaded yet: drop a file on the upload box first")
            query = self.explorer.upload_query(path, dict(zip(self.names, attributes)))
            return self._start(query, residual)

        return self._guard(self.start_size, run)

    def reset(self, query: Query | None, residual: bool) -> list[Any]:
        """The controls back to the factual values."""
        return self._guard(
            self.start_size,
            lambda: self._start(
                self._need(query, "pick a test image or upload one first"), residual
            ),
        )

    def intervene(self, query: Query | None, residual: bool, *values: Any) -> list[Any]:
        """A control moved: every model's counterfactual under the controls' values."""

        def run():
            self._need(query, "pick a test image or upload one first")
            return self.view(self.explorer.answer(query, dict(zip(self.names, values)), residual))

        return self._guard(self.view_size, run)

    def measure(self, file: str | None) -> list[Any]:
        """``Measure``: the upload's attributes that the dataset measures model-free."""

        def run():
            path = self._need(file, "no image uploaded yet: drop a file on the upload box first")
            measured = self.explorer.measure_upload(path)
            return [measured.get(n, self.skip) for n in self.names]

        return self._guard(len(self.names), run)

    def check(self, query: Query | None, residual: bool, *values: Any) -> list[Any]:
        """Composition and reversibility of this query, as a table."""

        def run():
            self._need(query, "pick a test image or upload one first")
            rows = self.explorer.soundness(query, dict(zip(self.names, values)), residual)
            return [_frame(rows)]

        return self._guard(1, run)

    def export(self, answer: Answer | None) -> list[Any]:
        """The panel as PNG and the numbers as CSV, as files to download."""

        def run():
            self._need(answer, "nothing to export yet: pick an image first")
            self.exports.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(dir=self.exports))
            png = self.explorer.panel_png(answer, folder / "counterfactual-panel.png")
            table = folder / "counterfactual-numbers.csv"
            table.write_text(self.explorer.numbers_csv(answer))
            return [[str(png), str(table)]]

        return self._guard(1, run)


def build_app(explorer: Explorer):
    """The explorer page as a ``gradio.Blocks`` (``.launch()`` it, or see :func:`launch`)."""
    gr = _gradio()
    graph = explorer.graph
    names = list(graph.names)
    has_residual = any("residual" in m.options for m in explorer.models.values())
    _, height, width = explorer.image_shape
    calls = Callbacks(explorer, skip=gr.skip())

    def shown(label: str, elem_id: str):
        return gr.Image(
            label=label,
            format="png",
            interactive=False,
            buttons=["download", "fullscreen"],  # no share button: nothing leaves the machine
            elem_id=elem_id,
        )

    with gr.Blocks(title="cfzoo counterfactual explorer", analytics_enabled=False) as app:
        query_state = gr.State(None)
        answer_state = gr.State(None)
        judges = ", ".join(explorer.judge_names) or "none"
        gr.Markdown(
            f"## cfzoo counterfactual explorer\n{explorer.datamodule.name}: "
            f"{', '.join(explorer.models)}. Attributes read off the images by: {judges}."
        )
        message = gr.Markdown("\n\n".join(explorer.problems), elem_id="explorer-message")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                with gr.Tab("Test image"):
                    position = gr.Slider(
                        0,
                        explorer.test_size - 1,
                        value=0,
                        step=1,
                        label=f"test image (0-{explorer.test_size - 1})",
                        elem_id="test-image",
                    )
                with gr.Tab("Upload"):
                    upload = gr.File(label=f"an image of {width}x{height} pixels", elem_id="upload")
                    fields = {}
                    for variable in graph.variables:
                        fields[variable.name] = gr.Number(
                            value=variable.loc if variable.is_continuous else 0,
                            label=f"{variable.name} {variable.describe_support()}",
                            elem_id=f"upload-{variable.name}",
                        )
                    measure_button = gr.Button(
                        "Measure the attributes off the image (model-free)",
                        visible=explorer.measures,
                        elem_id="measure",
                    )
                    use_upload = gr.Button("Use this image", elem_id="use-upload")
                gr.Markdown("### Intervene")
                controls = {}
                for variable in graph.variables:
                    name = variable.name
                    if variable.is_continuous:
                        low, high = variable.support
                        controls[name] = gr.Slider(
                            low,
                            high,
                            value=variable.loc,
                            step=slider_step(variable),
                            label=f"do({name})",
                            info=f"support {variable.describe_support()}",
                            elem_id=f"do-{name}",
                        )
                    else:
                        controls[name] = gr.Dropdown(
                            choices=[(str(c), c) for c in range(variable.num_classes)],
                            value=0,
                            label=f"do({name})",
                            elem_id=f"do-{name}",
                        )
                residual = gr.Checkbox(
                    True,
                    label="pixel residual (off: the decoder alone)",
                    visible=has_residual,
                    elem_id="residual",
                )
                reset = gr.Button("Reset to the factual values", elem_id="reset")
            with gr.Column(scale=3):
                do_text = gr.Markdown(elem_id="do-label")
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=200):
                        factual_image = shown("factual", "factual-image")
                        factual_text = gr.Markdown(
                            elem_id="factual-attributes", elem_classes=["attributes"]
                        )
                        truth_image = shown("true counterfactual", "truth-image")
                        truth_text = gr.Markdown(
                            elem_id="truth-attributes", elem_classes=["attributes"]
                        )
                    cf_images, diff_images, cf_texts = [], [], []
                    for i, name in enumerate(explorer.models):
                        with gr.Column(min_width=200):
                            cf_images.append(shown(f"{name}: counterfactual", f"cf-{i}"))
                            cf_texts.append(
                                gr.Markdown(
                                    elem_id=f"cf-attributes-{i}", elem_classes=["attributes"]
                                )
                            )
                            diff_images.append(
                                shown(f"{name}: change (red brighter, blue darker)", f"diff-{i}")
                            )
                with gr.Accordion("Soundness of this query, and the model cards", open=False):
                    check = gr.Button("Measure composition and reversibility", elem_id="check")
                    soundness_table = gr.Dataframe(interactive=False, elem_id="soundness")
                    for name, model in explorer.models.items():
                        gr.Markdown(card_markdown(name, model, explorer.reports.get(name)))
                        figures = (
                            report_figures(explorer.report_paths[name])
                            if name in explorer.report_paths
                            else []
                        )
                        if figures:
                            with gr.Row():
                                for figure in figures:
                                    gr.Image(
                                        str(figure),
                                        show_label=False,
                                        interactive=False,
                                        buttons=["fullscreen"],
                                    )
                with gr.Row():
                    export = gr.Button(
                        "Export the panel (PNG) and the numbers (CSV)", elem_id="export"
                    )
                    exported = gr.File(file_count="multiple", label="exports", elem_id="exports")

        values_in = [controls[n] for n in names]
        view_out = [
            answer_state,
            do_text,
            factual_image,
            factual_text,
            truth_image,
            truth_text,
            *cf_images,
            *diff_images,
            *cf_texts,
        ]
        start_out = [message, query_state, *values_in, *view_out]
        position.change(
            calls.pick_test, [position, residual], start_out, trigger_mode="always_last"
        )
        use_upload.click(calls.pick_upload, [upload, residual, *fields.values()], start_out)
        measure_button.click(calls.measure, [upload], [message, *fields.values()])
        reset.click(calls.reset, [query_state, residual], start_out)
        for control in [*values_in, residual]:
            control.input(
                calls.intervene,
                [query_state, residual, *values_in],
                [message, *view_out],
                trigger_mode="always_last",
            )
        check.click(calls.check, [query_state, residual, *values_in], [message, soundness_table])
        export.click(calls.export, [answer_state], [message, exported])
        app.load(calls.pick_test, [position, residual], start_out)
    return app


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame([{k: _round(v) for k, v in row.items()} for row in rows])


#: The attribute tables sit under 200-pixel images: small type, tight cells.
CSS = """
.attributes table { font-size: 0.75em; }
.attributes th, .attributes td { padding: 2px 5px !important; }
"""


def launch(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page on ``host:port`` (offline: no share link, no server-side rendering, no MCP).

    Returns the app and its URL; with ``block`` it serves until interrupted.
    """
    app = build_app(explorer)
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,
        mcp_server=False,
        prevent_thread_lock=True,
        quiet=True,
        footer_links=[],
        inbrowser=False,
        css=CSS,
    )
    print(f"cfzoo explorer running at {url} (Ctrl+C stops it)", flush=True)
    if block:
        app.block_thread()
    return app, url
