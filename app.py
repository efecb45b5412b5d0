"""resnet-lab: the Gradio app. Thin on purpose: the tabs live in `resnet_lab.ui`, the work in `resnet_lab`.

    python app.py [--weights PATH] [--device cpu|cuda] [--port 7860] [--host 127.0.0.1]

On a ZeroGPU Space (`SPACES_ZERO_GPU` set and the `spaces` package present),
`spaces` is imported before torch touches CUDA and the GPU work runs inside
`@spaces.GPU` functions; elsewhere nothing of this is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
from collections.abc import Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: Gradio's threads share few cores
if os.environ.get("SPACES_ZERO_GPU"):
    try:
        import spaces  # noqa: F401  (must come before torch initializes CUDA; ui.common.on_gpu uses it)
    except ImportError:
        pass

import gradio as gr  # noqa: E402

from resnet_lab.runtime import cost as research_cost  # noqa: E402
from resnet_lab.runtime.devices import resolve_device  # noqa: E402
from resnet_lab.runtime.precision import serving_choice  # noqa: E402
from resnet_lab.serving.zoo import ASSETS  # noqa: E402
from resnet_lab.ui import classify, common, gradcam, playground, research, session_nets  # noqa: E402
from resnet_lab.ui.common import user_errors  # noqa: E402

MAX_FILE_SIZE = "20mb"
MAX_QUEUE = 32
# Shapes images are 32 px: show them enlarged, pixels sharp
CSS = (".pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }\n"
       ".verdict { font-size: 1.05em; border-left: 4px solid var(--color-accent); padding-left: 0.8em; }\n"
       ".verdict .verdict { border-left: none; padding-left: 0; }\n"
       ".figure-caption p { margin-bottom: 0; }\n"
       # an example gallery's tiles start below its caption badge and its toolbar, not under them
       ".examples .grid-container { padding-top: 36px !important; }\n"
       "#faithfulness-table { overflow-x: auto; }\n"  # a wide table scrolls inside its box, not off the page
       # galleries of a few tiles (examples, every stage) as tall as their tiles, not Gradio's 450 px minimum
       ".examples .grid-wrap.fixed-height, #gradcam-stages .grid-wrap.fixed-height "
       "{ min-height: 0 !important; max-height: none !important; }\n"
       # as many columns as fit (a phone gets 3), never a column cut off at the right; captions wrap, not "..."
       ".examples .grid-container { grid-template-columns: repeat(auto-fit, minmax(84px, 1fr)) !important; }\n"
       "#gradcam-stages .grid-container { grid-template-columns: repeat(auto-fit, minmax(120px, 1fr)) !important; }\n"
       ".examples .caption-label { white-space: normal !important; max-width: 95% !important; }\n" + research.CSS)
LAUNCH = {"max_file_size": MAX_FILE_SIZE, "allowed_paths": [str(ASSETS)], "css": CSS}  # serve assets/, nothing else
# Gradio copies every upload and every returned file or image into its cache and, unless told, never deletes them.
# Every quarter of an hour delete what is older than our own outputs live (an hour): nothing outlives 75 minutes.
DELETE_CACHE = (common.KEEP_OUTPUTS_S // 4, common.KEEP_OUTPUTS_S)


START_HERE = """# resnet-lab
Why do residual connections let deep networks train? **Start here:** open the **Playground** tab and press
**Train both**. In about two minutes a 56-layer plain network stays at chance while its ResNet twin (the same
network plus skip connections) learns. Then **Classify** an image, see with **Grad-CAM** where a network looked,
and read the measured reasons in **Research**."""


def build_demo() -> gr.Blocks:
    """The whole app. Loading the default model's metadata is the only work done here; weights load lazily."""
    default = common.zoo().default_model()
    with gr.Blocks(title="resnet-lab", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(START_HERE, elem_id="start-here")
        with gr.Row():
            model, tag = common.model_picker(default)
        status = gr.Markdown(elem_id="status")
        # Short names, and wrapping rather than Gradio's "..." menu: on a 390 px phone all four stay in sight
        with gr.Tabs(overflow_behavior="wrap", elem_id="top-tabs"):
            with gr.Tab("Classify"):
                classify.build_tab(model, tag, default)
            with gr.Tab("Grad-CAM"):
                gradcam.build_tab(model, tag, default)
            with gr.Tab("Playground"):
                runs = playground.build_tab()
            with gr.Tab("Research"):
                pickers = research.build_tab()
        # A finished Playground run's nets join this session's pickers (and only this session's: see session_nets)
        runs.change(session_nets.offer_runs(research.offer), runs, [model, *pickers], api_visibility="private",
                    queue=False)
        # The status line loads the model (seconds for a large one): real work, so it queues with the quick jobs,
        # and a typed unknown tag gets our message. Callable as /status for API users; not listed.
        status_text = user_errors(common.status_text)
        model.change(common.on_model_change, model, tag, api_visibility="private")
        tag.change(status_text, [model, tag], status, api_name="status", api_visibility="undocumented",
                   **common.QUICK)
        demo.load(status_text, [model, tag], status, api_visibility="private", **common.QUICK)
    # One concurrency model for the whole app: every event that does real work is in one of two shared groups,
    # common.QUICK (classify, Grad-CAM, status: one per two granted cores, 2 on a GPU) or common.LONG (faithfulness
    # recompute, research sweeps, degradation, all depths: one at a time). Gradio puts any other event in a group
    # of its own (keyed by its function), with this default limit: only cheap UI updates (dropdown choices, a Shapes
    # sample, a button label) are left there, each at most one at a time, so they never wait behind a long job.
    # max_size bounds the waiting requests: a flood gets "queue full" instead of unbounded memory.
    demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    return demo


@contextlib.contextmanager
def served() -> Iterator[tuple[gr.Blocks, str]]:
    """The app (`build_demo`, with the zoo the caller set) served in this process on a free loopback port, for the
    tests and docs/screenshots.py; yields (demo, URL) and closes it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **LAUNCH)
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def main() -> None:
    p = argparse.ArgumentParser(description="resnet-lab web app")
    p.add_argument("--weights", help="local .safetensors file or folder (else RESNET_LAB_WEIGHTS, else the hub)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (else RESNET_LAB_DEVICE, else cuda when present)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = p.parse_args()
    if args.weights:
        os.environ["RESNET_LAB_WEIGHTS"] = args.weights
    if args.device:
        os.environ["RESNET_LAB_DEVICE"] = args.device
    try:  # a wrong RESNET_LAB_PRECISION or device stops here, once, rather than at every model load
        print("precision:", serving_choice(resolve_device())[1])
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    demo = build_demo()
    demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, **LAUNCH)
    # Serving first, then time this server for the estimates (the cost model's probes) while it is idle: timed at
    # the first page load instead, beside that load's own work, they priced the Playground's defaults 4x too slow.
    research_cost.warm_up(resolve_device())
    demo.block_thread()


if __name__ == "__main__":
    main()
